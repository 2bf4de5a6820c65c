"""Page text of the first-run setup on the Status tab (merged into :mod:`webui.i18n`); the refusals' keys and
parameters come from ``pipeline/setup_checks.py`` and ``pipeline/setup_run.py``."""

from __future__ import annotations

STRINGS: dict[str, tuple[str, str]] = {
    "setup_title": ("Set up the model", "Установка модели"),
    "setup_intro": (
        "There is no usable model bundle here yet. **Download and convert** fetches upstream's Fun-CosyVoice3-0.5B "
        "(about 5.8 GB, into `{checkpoint}`) and converts it into `{bundle}`; the studio then loads it, no restart "
        "needed. Or convert a checkpoint folder already on this machine. The conversion needs about "
        "{need:.1f} GB of free memory (RAM + swap) and runs PyTorch, which is installed the first time (~200 MB).",
        "Рабочего пакета модели здесь пока нет. **Скачать и конвертировать** загрузит оригинальную Fun-CosyVoice3-0.5B "
        "(около 5.8 ГБ, в `{checkpoint}`) и сконвертирует её в `{bundle}`; студия сразу её загрузит, перезапуск не "
        "нужен. Или сконвертируйте папку с чекпойнтом, которая уже есть на этой машине. Конвертации нужно около "
        "{need:.1f} ГБ свободной памяти (ОЗУ + подкачка) и PyTorch, который установится при первом запуске "
        "(~200 МБ)."),
    "setup_download": ("Download and convert", "Скачать и конвертировать"),
    "setup_folder": ("Local checkpoint folder (on this machine)", "Папка с чекпойнтом (на этой машине)"),
    "setup_folder_ph": ("e.g. /home/anna/models/cosyvoice3", "например, /home/anna/models/cosyvoice3"),
    "setup_use_folder": ("Use this folder", "Взять эту папку"),
    "setup_cancel": ("Stop", "Остановить"),
    "setup_busy": ("A setup is already running.", "Установка уже идёт."),
    "setup_nothing": ("Nothing is running.", "Ничего не выполняется."),
    "st_check": ("Checks (memory, disk, PyTorch)", "Проверки (память, диск, PyTorch)"),
    "st_install": ("Install PyTorch and the converter", "Установка PyTorch и конвертера"),
    "st_download": ("Download", "Загрузка"),
    "st_convert": ("Convert", "Конвертация"),
    "st_place": ("Put the bundle in place", "Размещение пакета"),
    "st_load": ("Load the models", "Загрузка моделей"),
    "setup_mb": ("{done:.1f} of {total:.1f} MB", "{done:.1f} из {total:.1f} МБ"),
    "setup_elapsed": ("{secs:.0f} s", "{secs:.0f} с"),
    "setup_step": ("step: {step}", "шаг: {step}"),
    "setup_done": ("The model is ready and loaded: make a voice on the **Voices** tab, then **Speak**.",
                   "Модель готова и загружена: сделайте голос на вкладке **Голоса**, затем **Озвучить**."),
    "setup_failed": ("Setup failed: {error}", "Установка не удалась: {error}"),
    "setup_cancelled": ("Stopped. Press the button again to continue: the files already downloaded are kept.",
                        "Остановлено. Нажмите кнопку ещё раз, чтобы продолжить: уже скачанные файлы сохранены."),
    "setup_refused": ("It cannot run here:", "Здесь это не получится:"),
    "setup_note_no_toolkit": (
        "This board has an NPU, but the rknn-toolkit2 environment is missing: the flow will run on the CPU. For "
        "the NPU graphs run `scripts/setup-rknn-env.sh`, then convert again.",
        "На плате есть NPU, но нет окружения rknn-toolkit2: flow будет работать на CPU. Для графов NPU выполните "
        "`scripts/setup-rknn-env.sh` и сконвертируйте заново."),
    "setup_note_rknn_memory": (
        "This board has an NPU, but building its graphs needs about 9 GB of memory (rknn-toolkit2): the bundle is "
        "made without them and the flow runs on the CPU. Build them on an x86 computer (`./cv convert … --rknn "
        "rk3588`, docs/rk3588.md) and copy the bundle here for the NPU.",
        "На плате есть NPU, но для сборки его графов нужно около 9 ГБ памяти (rknn-toolkit2): пакет будет без них, "
        "flow будет работать на CPU. Соберите их на x86-компьютере (`./cv convert … --rknn rk3588`, "
        "docs/rk3588.md) и скопируйте пакет сюда."),
    "setup_note_rknn_time": (
        "The NPU graphs are built too (rknn-toolkit2 is here): about half an hour per graph on an x86 computer, "
        "longer on the board.",
        "Графы NPU тоже собираются (rknn-toolkit2 есть): около получаса на граф на x86-компьютере, на плате дольше."),
    "setup_moved": ("What was in the bundle folder was kept as `{path}`.",
                    "То, что было в папке пакета, сохранено как `{path}`."),
    # refusals (pipeline/setup_checks.py, pipeline/setup_run.py)
    "setup_no_memory": (
        "The conversion needs about {need:.1f} GB of memory and this machine has {have:.1f} GB free (RAM "
        "{ram:.1f} GB + swap {swap:.1f} GB). Convert on an x86 computer and copy the bundle here (README, “On an "
        "RK3588 board”), or add swap (a swap file on an SSD) and try again.",
        "Конвертации нужно около {need:.1f} ГБ памяти, а свободно {have:.1f} ГБ (ОЗУ {ram:.1f} ГБ + подкачка "
        "{swap:.1f} ГБ). Сконвертируйте на x86-компьютере и скопируйте пакет сюда (README, «On an RK3588 board») "
        "или добавьте подкачку (файл подкачки на SSD) и попробуйте снова."),
    "setup_no_disk": (
        "Not enough disk space: {what} needs about {need:.2f} GB free in `{folder}`, there are {have:.2f} GB. Free "
        "some space or start the studio with `--bundle` on a larger disk.",
        "Мало места на диске: нужно около {need:.2f} ГБ свободных в `{folder}`, есть {have:.2f} ГБ. Освободите "
        "место или запустите студию с `--bundle` на большем диске."),
    "setup_no_compiler": (
        "PyTorch and the converter have no ready-made package for this machine and would be built from source, "
        "which needs {missing}. Install them, or convert on an x86 computer and copy the bundle here (README, “On "
        "an RK3588 board”).",
        "Для этой машины нет готовых пакетов PyTorch и конвертера, их пришлось бы собирать из исходников, а для "
        "этого нужны: {missing}. Установите их или сконвертируйте на x86-компьютере и скопируйте пакет сюда "
        "(README, «On an RK3588 board»)."),
    "setup_no_index": ("Cannot reach the Python package index to install PyTorch ({error}); check the internet "
                       "connection and try again.",
                       "Нет доступа к каталогу пакетов Python для установки PyTorch ({error}); проверьте "
                       "подключение к интернету и попробуйте снова."),
    "setup_bundle_file": ("`{path}` is a file, not a bundle folder; move it away or start the studio with another "
                          "`--bundle`.",
                          "`{path}` — файл, а не папка пакета; уберите его или запустите студию с другим "
                          "`--bundle`."),
    "setup_folder_empty": ("Type the path of an upstream checkpoint folder on this machine.",
                           "Введите путь к папке с оригинальным чекпойнтом на этой машине."),
    "setup_folder_missing": ("`{path}` is not a folder on this machine.", "`{path}` — не папка на этой машине."),
    "setup_folder_incomplete": ("`{path}` is not a CosyVoice3 checkpoint: {missing} missing (**Download and "
                                "convert** fetches them).",
                                "`{path}` — не чекпойнт CosyVoice3: нет {missing} (**Скачать и конвертировать** "
                                "загрузит их)."),
}

# the setup's own failures (pipeline/setup_run.py), as localize() puts them into Russian
RU_MESSAGES: list[tuple[str, str]] = [
    (r"^cannot reach (\S+) \((.+)\); check the internet connection",
     "нет доступа к {0} ({1}); проверьте подключение к интернету (или HF_ENDPOINT) и попробуйте снова"),
    (r"^(\w+) failed \(exit code (-?\d+)\): (.*)$", "этап {0} не удался (код выхода {1}): {2}"),
    (r"^the bundle is in place but the worker could not load it: (.*)$",
     "пакет на месте, но модели не загрузились: {0}"),
]
