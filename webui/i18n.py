"""Page text in English and Russian. ``t(key, lang, **params)``; a missing Russian string falls back to English.

Everything the page itself says is here; messages that come from the pipeline (prompt checks, bundle, voice
and worker errors) are put into Russian by :func:`localize` (``docs/reliability.md`` lists them with both texts).
"""

from __future__ import annotations

import re
from typing import Any

from . import i18n_asr as _asr
from . import i18n_modes as _modes
from . import i18n_setup as _setup

LANGS = ("en", "ru")
LANG_CHOICES = [("English", "en"), ("Русский", "ru")]

_S: dict[str, tuple[str, str]] = {
    # header
    "title": ("CosyVoice-RK studio", "Студия CosyVoice-RK"),
    "subtitle": ("Voice cloning on this board (CosyVoice3 or Qwen3-TTS): save a voice from a short recording, then "
                 "make it speak any text.",
                 "Клонирование голоса на этой плате (CosyVoice3 или Qwen3-TTS): сохраните голос по короткой записи и "
                 "озвучьте им любой текст."),
    "ui_language": ("Interface language", "Язык интерфейса"),
    "step_voice": ("Make a voice from 3–10 s of speech", "Сделайте голос по 3–10 с речи"),
    "step_speak": ("Type any text", "Введите любой текст"),
    "step_listen": ("Listen and download", "Слушайте и скачивайте"),
    "first_visit": ("**Start here:** no voice is saved yet. Make one on the **Voices** tab from a 3–10 s recording "
                    "(or use a one-off recording below), then come back and type what it should say.",
                    "**Начните отсюда:** сохранённых голосов пока нет. Сделайте голос на вкладке **Голоса** по "
                    "записи 3–10 с (или используйте разовую запись ниже), затем вернитесь и введите текст."),
    "first_visit_go": ("Make a voice →", "Сделать голос →"),
    "result_title": ("Result", "Результат"),
    # no bundle
    "no_bundle": ("**No model bundle.** {error}", "**Нет пакета модели.** {error}"),
    "how_to_get": (
        "**Set it up from this page:** the **Status** tab downloads (5.77 GB) and converts it here, or converts a "
        "checkpoint folder you already have. By hand (e.g. on an x86 computer with internet):\n\n"
        "```sh\n./cv download models/cosyvoice3\n./cv convert models/cosyvoice3 {bundle}\n```\n\n"
        "Copy `{bundle}` to the board if you converted elsewhere, then press **Check again** (or restart "
        "`cosyvoice-rk webui --bundle {bundle}`). To try the page without real weights: "
        "`./cv make-random-bundle {bundle}` (it does not speak any language).",
        "**Установите его с этой страницы:** вкладка **Состояние** скачает (5,77 ГБ) и сконвертирует модель здесь "
        "или сконвертирует уже имеющуюся папку с чекпойнтом. Вручную (например, на x86-компьютере с интернетом):\n\n"
        "```sh\n./cv download models/cosyvoice3\n./cv convert models/cosyvoice3 {bundle}\n```\n\n"
        "Если конвертировали на другом компьютере, скопируйте `{bundle}` на плату и нажмите **Проверить снова** "
        "(или перезапустите `cosyvoice-rk webui --bundle {bundle}`). Посмотреть страницу без настоящих весов: "
        "`./cv make-random-bundle {bundle}` (такой пакет не говорит ни на одном языке)."),
    "worker_unavailable": ("**The models could not be loaded.** {error}", "**Не удалось загрузить модели.** {error}"),
    "random_bundle": ("This bundle has **random weights** (a test bundle): every stage runs, but the result is "
                      "noise, not speech.",
                      "В этом пакете **случайные веса** (тестовый пакет): все этапы работают, но результат — шум, "
                      "а не речь."),
    "check_again": ("Check again", "Проверить снова"),
    # tabs
    "tab_speak": ("Speak", "Озвучить"),
    "tab_voices": ("Voices", "Голоса"),
    "tab_status": ("Status", "Состояние"),
    # speak tab
    "voice_source": ("Voice", "Голос"),
    "src_saved": ("Saved voice", "Сохранённый голос"),
    "src_prompt": ("One-off recording", "Разовая запись"),
    "saved_voice": ("Saved voice", "Сохранённый голос"),
    "refresh": ("Refresh", "Обновить"),
    "no_voices_yet": ("No voices saved yet: add one on the **Voices** tab, or use a one-off recording.",
                      "Сохранённых голосов пока нет: добавьте голос на вкладке **Голоса** или используйте разовую "
                      "запись."),
    "prompt_audio": ("Prompt recording (3–10 s of one person speaking)",
                     "Образец голоса (3–10 с речи одного человека)"),
    "prompt_text": ("What the recording says (exact words)", "Что сказано в записи (дословно)"),
    "prompt_text_ph": ("Type or paste the transcript of the recording", "Введите или вставьте текст записи"),
    "prompt_language": ("Language of the recording", "Язык записи"),
    "text": ("Text to speak", "Текст для озвучивания"),
    "text_ph": ("Type or paste text. Long text is split into sentences and plays as each part is ready.",
                "Введите или вставьте текст. Длинный текст делится на части и звучит по мере готовности."),
    "preview_title": ("What will be read (parts: {n}; each is one model run):",
                      "Что будет прочитано (частей: {n}; каждая — один запуск модели):"),
    "language": ("Language of the text", "Язык текста"),
    "temperature": ("Temperature", "Температура"),
    "temperature_info": ("1.0 = as upstream; lower is steadier, higher more varied",
                         "1.0 — как в оригинале; ниже — ровнее, выше — разнообразнее"),
    "advanced": ("Advanced", "Дополнительно"),
    "seed": ("Seed", "Зерно"),
    "seed_info": ("-1 = random; the same seed and settings repeat a result",
                  "-1 — случайное; то же зерно и настройки повторяют результат"),
    "top_k": ("Top-k", "Top-k"),
    "top_p": ("Top-p", "Top-p"),
    "generate": ("Generate", "Озвучить"),
    "cancel": ("Cancel", "Отменить"),
    "live": ("Playing as it is made", "Воспроизведение по мере готовности"),
    "result": ("Result (whole text)", "Результат (весь текст)"),
    "download_wav": ("Download WAV", "Скачать WAV"),
    "history": ("Recent results", "Последние результаты"),
    "history_player": ("Selected result", "Выбранный результат"),
    "history_empty": ("Nothing generated yet.", "Пока ничего не создано."),
    "h_time": ("Time", "Время"),
    "h_voice": ("Voice", "Голос"),
    "h_text": ("Text", "Текст"),
    "h_seconds": ("Length, s", "Длина, с"),
    "h_rtf": ("RTF", "RTF"),
    "one_off": ("(one-off recording)", "(разовая запись)"),
    "chars": ("{n} / {limit} characters", "{n} / {limit} символов"),
    # progress
    "p_queued": ("Waiting in the queue: {ahead} job(s) ahead of this one.",
                 "Ожидание в очереди: впереди заданий — {ahead}."),
    "p_queued_next": ("Next in the queue.", "Следующее в очереди."),
    "p_starting": ("Starting…", "Запуск…"),
    "p_voice": ("Preparing the voice…", "Подготовка голоса…"),
    "p_prefill": ("reading the text and the prompt (prefill, {positions} positions{cached})",
                  "чтение текста и образца (prefill, позиций: {positions}{cached})"),
    "p_cached": (", prompt part cached", ", часть образца из кэша"),
    "p_tokens": ("generating speech tokens: {n}", "генерация речевых токенов: {n}"),
    "p_flow": ("flow: {tokens} speech tokens → mel spectrogram", "flow: {tokens} речевых токенов → мел-спектрограмма"),
    "p_vocoder": ("vocoder: mel → audio", "вокодер: мел → звук"),
    "p_segment": ("Part {i} of {n}: {what}", "Часть {i} из {n}: {what}"),
    "p_ready": ("{k} of {n} part(s) ready, {secs:.1f} s of audio.", "Готово частей: {k} из {n}, звука {secs:.1f} с."),
    "p_done": ("Done: {secs:.1f} s of audio.", "Готово: {secs:.1f} с звука."),
    "p_cancelled": ("Cancelled.", "Отменено."),
    "p_cancelled_after": ("Cancelled after {k} of {n} part(s).", "Отменено после частей: {k} из {n}."),
    "p_cancelling": ("Cancelling…", "Отмена…"),
    "p_nothing_to_cancel": ("Nothing is running.", "Ничего не выполняется."),
    "p_error": ("Failed: {error}", "Ошибка: {error}"),
    "p_kept": ("The {secs:.1f} s made before it stopped are kept in Recent results.",
               "Готовые {secs:.1f} с сохранены в «Последних результатах»."),
    "r_partial": ("**Partial result:** {secs:.1f} s of audio, {k} of {n} part(s) made before the job stopped.",
                  "**Частичный результат:** {secs:.1f} с звука, частей: {k} из {n} — сделано до остановки."),
    # live playback (webui/live_player.js), the streaming switch
    "lp_waiting": ("Waiting for the first audio…", "Ожидание первого звука…"),
    "lp_buffering": ("Buffering… {made} s made; it plays once it can play to the end without pauses.",
                     "Буферизация… готово {made} с; звук пойдёт, когда сможет звучать до конца без пауз."),
    "lp_playing": ("▶ Playing: {played} s of {made} s made.", "▶ Звучит: {played} с из {made} с готовых."),
    "lp_played": ("Played {played} s.", "Прослушано {played} с."),
    "lp_stopped": ("Stopped after {played} s.", "Остановлено после {played} с."),
    "lp_ended": ("The job stopped before playback began ({made} s made).",
                 "Задание остановлено до начала воспроизведения (готово {made} с)."),
    "lp_failed": ("Live playback failed: {error}", "Живое воспроизведение не удалось: {error}"),
    "lp_no_webaudio": ("This browser cannot play audio as it is made (no Web Audio); the result appears below "
                       "when it is done.",
                       "Этот браузер не умеет воспроизводить звук по мере готовности (нет Web Audio); результат "
                       "появится ниже, когда будет готов."),
    "lp_stop": ("Stop", "Стоп"),
    "stream": ("Play while it is made (streaming)", "Воспроизводить по мере готовности (потоково)"),
    "stream_info": ("Off: each part is made in one pass (upstream's non-streaming synthesis) and heard when it is "
                    "done", "Выкл.: каждая часть создаётся за один проход (синтез без потока, как в оригинале) и "
                    "звучит, когда готова"),
    "s_stream": ("Streaming", "Потоковый синтез"),
    "r_ttfa": ("First audio after {secs:.1f} s.", "Первый звук через {secs:.1f} с."),
    # result
    "r_summary": ("**{secs:.1f} s** of audio · computed in {compute:.1f} s · **RTF {rtf:.2f}** · {tokens} speech "
                  "tokens · {segments} part(s) · seed {seed}",
                  "**{secs:.1f} с** звука · вычислено за {compute:.1f} с · **RTF {rtf:.2f}** · речевых токенов: "
                  "{tokens} · частей: {segments} · зерно {seed}"),
    "r_stage": ("Stage", "Этап"),
    "r_backend": ("Backend", "Бэкенд"),
    "r_time": ("Time", "Время"),
    "stage_llm": ("LLM: text → speech tokens", "LLM: текст → речевые токены"),
    "stage_flow": ("Flow: speech tokens → mel", "Flow: речевые токены → мел"),
    "stage_vocoder": ("Vocoder: mel → 24 kHz audio", "Вокодер: мел → звук 24 кГц"),
    "stage_prompt": ("Prompt: recording → codes and speaker embedding", "Образец: запись → коды и эмбеддинг голоса"),
    "stage_talker": ("Talker + code predictor: text → codes", "Talker + предсказатель кодов: текст → коды"),
    "stage_decoder": ("Decoder: codes → 24 kHz audio", "Декодер: коды → звук 24 кГц"),
    "warning": ("Warning: {w}", "Предупреждение: {w}"),
    # voices tab
    "new_voice": ("New voice", "Новый голос"),
    "saved_voices": ("Saved voices", "Сохранённые голоса"),
    "voice_audio": ("Prompt recording: upload a file or record (3–10 s of one person, no music)",
                    "Образец: загрузите файл или запишите (3–10 с речи одного человека, без музыки)"),
    "mic_hint": ("The microphone works only over HTTPS or on this computer (localhost). On another machine of "
                 "the network, upload a file recorded elsewhere, or start the studio with `--https`.",
                 "Микрофон работает только по HTTPS или на этом же компьютере (localhost). На другом компьютере "
                 "сети загрузите готовый файл или запустите студию с `--https`."),
    "transcript": ("Transcript: exactly what the recording says", "Текст записи: дословно то, что в ней сказано"),
    "transcript_ph": ("Type or paste the words spoken in the recording", "Введите или вставьте слова из записи"),
    "voice_name": ("Name", "Имя"),
    "voice_name_ph": ("e.g. Anna", "например, Анна"),
    "voice_language": ("Language of the recording", "Язык записи"),
    "replace": ("Replace a voice with the same name", "Заменить голос с тем же именем"),
    "save_voice": ("Save voice", "Сохранить голос"),
    "saving": ("Saving: computing the voice features…", "Сохранение: вычисление признаков голоса…"),
    "saving_queued": ("Waiting for the worker ({ahead} job(s) ahead)…", "Ожидание обработчика (впереди: {ahead})…"),
    "saved": ("Saved “{name}” ({secs:.1f} s of speech, {tokens} prompt tokens).",
              "Голос «{name}» сохранён ({secs:.1f} с речи, токенов образца: {tokens})."),
    "prompt_ok": ("{secs:.1f} s of speech ({trimmed:.1f} s of silence trimmed), {rate} Hz.",
                  "{secs:.1f} с речи (обрезано тишины: {trimmed:.1f} с), {rate} Гц."),
    "voice_list": ("Voice", "Голос"),
    "voice_details": ("**{name}** · {engine} · {language} · {secs} · saved {created}\n\n> {transcript}",
                      "**{name}** · {engine} · {language} · {secs} · сохранён {created}\n\n> {transcript}"),
    "voice_unreadable": ("This voice cannot be read: {error}", "Этот голос не читается: {error}"),
    "voice_player": ("Its recording", "Его запись"),
    "rename_to": ("New name", "Новое имя"),
    "rename": ("Rename", "Переименовать"),
    "renamed": ("Renamed to “{name}”.", "Переименован в «{name}»."),
    "delete": ("Delete", "Удалить"),
    "delete_confirm": ("Delete “{name}” for good?", "Удалить «{name}» навсегда?"),
    "delete_yes": ("Yes, delete", "Да, удалить"),
    "delete_no": ("Keep it", "Оставить"),
    "deleted": ("Deleted “{name}”.", "Голос «{name}» удалён."),
    "export": ("Export", "Экспорт"),
    "export_file": ("Exported voice file (.cvvoice)", "Файл голоса (.cvvoice)"),
    "exported": ("Exported: download the file below. Import it on another studio or with "
                 "`cosyvoice-rk speakers import`.",
                 "Экспортировано: скачайте файл ниже. Импортируйте его в другой студии или командой "
                 "`cosyvoice-rk speakers import`."),
    "import_title": ("Import a voice file", "Импорт файла голоса"),
    "import_file": ("Voice file (.cvvoice)", "Файл голоса (.cvvoice)"),
    "import_name": ("Save as (empty: the name in the file)", "Сохранить как (пусто — имя из файла)"),
    "import": ("Import", "Импортировать"),
    "imported": ("Imported “{name}”.", "Голос «{name}» импортирован."),
    "choose_voice": ("Choose a voice first.", "Сначала выберите голос."),
    "damaged_title": ("Damaged voices", "Повреждённые голоса"),
    "damaged_help": ("These folders cannot be read as voices. **Repair** puts the recording left in the folder into "
                     "the form on the left: type what it says and press **Save voice**. **Delete** removes the folder.",
                     "Эти папки не читаются как голоса. **Восстановить** — запись из папки попадёт в форму слева: "
                     "введите, что в ней сказано, и нажмите **Сохранить голос**. **Удалить** — удаляет папку."),
    "damaged_pick": ("Damaged voice", "Повреждённый голос"),
    "repair": ("Repair", "Восстановить"),
    "repair_hint": ("The recording of “{name}” is in the form on the left: type exactly what it says and press "
                    "**Save voice** (“replace” is ticked).",
                    "Запись голоса «{name}» — в форме слева: введите дословно, что в ней сказано, и нажмите "
                    "**Сохранить голос** («заменить» отмечено)."),
    "repair_no_audio": ("“{name}” has no recording left: upload or record a new one on the left and save it under "
                        "this name (“replace” is ticked), or delete it.",
                        "У голоса «{name}» не осталось записи: загрузите или запишите новую слева и сохраните под "
                        "этим именем («заменить» отмечено) или удалите его."),
    "choose_file": ("Choose a .cvvoice file first.", "Сначала выберите файл .cvvoice."),
    # status
    "status_refresh": ("Refresh", "Обновить"),
    "restart_worker": ("Restart the worker", "Перезапустить обработчик"),
    "restarting": ("Restarting the worker…", "Перезапуск обработчика…"),
    "s_bundle": ("Model bundle", "Пакет модели"),
    "s_path": ("Path", "Путь"),
    "s_engine": ("Engine", "Движок"),
    "s_model": ("Converted from", "Сконвертирован из"),
    "s_fingerprint": ("Fingerprint", "Отпечаток"),
    "s_weights": ("Weights", "Веса"),
    "s_random": ("random (test bundle)", "случайные (тестовый пакет)"),
    "s_real": ("converted checkpoint", "сконвертированный чекпойнт"),
    "s_llm_ckpt": ("LLM checkpoint", "Чекпойнт LLM"),
    "s_llm_rl": ("{file}: upstream's RL-tuned LLM", "{file}: LLM upstream, дообученная с RL"),
    "s_llm_base": ("{file}: upstream's base LLM", "{file}: базовая LLM upstream"),
    "s_not_recorded": ("not recorded (converted before this was recorded)",
                       "не записан (пакет сконвертирован до того, как это стали записывать)"),
    "s_tokenizer": ("Text tokenizer", "Текстовый токенизатор"),
    "s_quant": ("LLM variant", "Вариант LLM"),
    "s_backends": ("Backends", "Бэкенды"),
    "s_flow_choice": ("Flow backend choice", "Выбор бэкенда flow"),
    "s_cpus": ("CPU placement", "Размещение по ядрам CPU"),
    "s_flow_steps": ("Flow Euler steps", "Шаги Эйлера во flow"),
    "s_worker": ("Worker process", "Процесс-обработчик"),
    "s_state": ("State", "Состояние"),
    "s_pid": ("PID", "PID"),
    "s_memory": ("Memory", "Память"),
    "s_uptime": ("Up for", "Работает"),
    "s_jobs": ("Jobs done / failed / cancelled", "Заданий выполнено / с ошибкой / отменено"),
    "s_restarts": ("Restarts (crashes)", "Перезапусков (падений)"),
    "s_last_crash": ("Last crash", "Последнее падение"),
    "s_queue": ("Queue", "Очередь"),
    "s_queue_value": ("{running}, {waiting} waiting (at most {max})", "{running}, ожидают {waiting} (не более {max})"),
    "s_running": ("running: {kind} #{id} for {secs:.0f} s", "выполняется: {kind} #{id}, {secs:.0f} с"),
    "s_idle": ("nothing running", "ничего не выполняется"),
    "s_voices": ("Saved voices", "Сохранённые голоса"),
    "u_s": ("{n:.0f} s", "{n:.0f} с"),
    "u_sec1": ("{n:.1f} s", "{n:.1f} с"),
    "u_sec2": ("{n:.2f} s", "{n:.2f} с"),
    "u_mb": ("{n:.0f} MB", "{n:.0f} МБ"),
    "s_folders": ("Folders", "Папки"),
    "badge": ("Worker: {state} · queue {queued}", "Обработчик: {state} · очередь {queued}"),
    "state_ready": ("ready", "готов"),
    "state_busy": ("busy", "занят"),
    "state_starting": ("loading the models", "загрузка моделей"),
    "state_restarting": ("restarting", "перезапуск"),
    "state_crashed": ("crashed, retrying", "упал, повтор"),
    "state_unavailable": ("unavailable", "недоступен"),
    "state_failed": ("failed", "сбой"),
    "state_stopped": ("not started (no bundle)", "не запущен (нет пакета)"),
    # errors
    "err_no_audio": ("Upload or record a 3–10 s prompt.", "Загрузите или запишите образец длиной 3–10 с."),
    "err_transcript": ("Type exactly what the recording says.", "Введите дословно то, что сказано в записи."),
    "err_transcript_long": ("The transcript is longer than 1000 characters: use a 3–10 s recording and its exact "
                            "words.", "Текст записи длиннее 1000 символов: используйте запись 3–10 с и её точный "
                            "текст."),
    "err_name_taken": ("A voice named “{name}” already exists: choose another name or tick “replace”.",
                       "Голос «{name}» уже есть: выберите другое имя или отметьте «заменить»."),
    "err_new_name": ("Type the new name.", "Введите новое имя."),
    "err_text_empty": ("Type the text to speak.", "Введите текст для озвучивания."),
    "err_engine_mode": ("{engine} has no {mode} mode: choose another one.",
                        "У движка {engine} нет режима {mode}: выберите другой."),
    "err_engine_speed": ("{engine} has no speed control: leave the speed at 1.0.",
                         "У движка {engine} нет управления скоростью: оставьте скорость 1.0."),
    "err_engine_tags": ("{engine} reads no control tags ({tags} are CosyVoice3's): remove them or write the words "
                        "instead.", "Движок {engine} не читает управляющие метки ({tags} — метки CosyVoice3): уберите "
                        "их или напишите слова."),
    "err_text_long": ("The text has {n} characters, the limit is {limit}: split it into parts.",
                      "В тексте {n} символов, предел — {limit}: разделите его на части."),
    "err_no_voice": ("Choose a saved voice, or give a one-off recording.",
                     "Выберите сохранённый голос или дайте разовую запись."),
    "err_internal": ("Internal error ({error}); the details are in the server log.",
                     "Внутренняя ошибка ({error}); подробности в журнале сервера."),
}

_S.update(_modes.STRINGS)
_S.update(_asr.STRINGS)
_S.update(_setup.STRINGS)


def t(key: str, lang: str = "en", **params: Any) -> str:
    en, ru = _S[key]
    s = ru if lang == "ru" and ru else en
    return s.format(**params) if params else s


def pick_language(accept_language: str | None) -> str:
    """``ru`` when the browser prefers Russian (Accept-Language), else ``en``."""
    best, best_q = "en", -1.0
    for part in (accept_language or "").split(","):
        tag, _, q = part.strip().partition(";q=")
        try:
            weight = float(q) if q else 1.0
        except ValueError:
            weight = 0.0
        code = tag.split("-")[0].lower()
        if code in LANGS and weight > best_q:
            best, best_q = code, weight
    return best


# Russian for the pipeline's messages (prompt checks, voices, imports, bundles, the worker). tests/bad_inputs.py
# runs every refusal a person can meet through these; one without a pattern fails tests/test_reliability.py.
_RU_MESSAGES: list[tuple[re.Pattern[str], str]] = [(re.compile(p), r) for p, r in (
    (r"^prompt is ([\d.]+) s of speech after trimming silence; record (.+)$",
     "в образце {0} с речи после обрезки тишины; запишите {1}"),
    (r"^prompt is ([\d.]+) s; cut it to (.+)$", "образец длится {0} с; обрежьте его до {1}"),
    (r"^prompt is ([\d.]+) s long, the limit is ([\d.]+) s; cut it to (.+) of speech$",
     "образец длится {0} с, предел — {1} с; обрежьте его до {2} речи"),
    (r"^prompt is (\d+) Hz; record at (\d+) kHz or more$", "частота образца {0} Гц; записывайте с {1} кГц или выше"),
    (r"^prompt is silent \(its loudest part is (-?[\d.]+) dBFS\); record (.+) of speech closer to the microphone$",
     "образец беззвучен (самое громкое место {0} дБFS); запишите {1} речи ближе к микрофону"),
    (r"^prompt file is ([\d.]+) MB, the limit is ([\d.]+) MB; upload a short clip \((.+) of speech\)$",
     "файл образца {0} МБ, предел — {1} МБ; загрузите короткий фрагмент ({2} речи)"),
    (r"^(.+) is not an audio file that can be read \(damaged, or a format this machine does not read\); "
     r"use one of: (.+)$",
     "файл {0} не читается как звук (повреждён или в формате, который здесь не читается); используйте один из "
     "форматов: {1}"),
    (r"^(.+) is empty \(0 bytes\); upload or record (.+) of speech$",
     "файл {0} пуст (0 байт); загрузите или запишите {1} речи"),
    (r"^(.+) contains no audio samples; record (.+) of speech$", "в файле {0} нет звука; запишите {1} речи"),
    (r"^prompt file (.+) does not exist$", "файла образца {0} нет; загрузите его снова"),
    (r"^model bundle (.+) does not exist; ", "пакета модели {0} нет; его можно установить на вкладке «Состояние» или "
                                            "вручную: `cosyvoice-rk download ckpt/`, затем `cosyvoice-rk convert "
                                            "ckpt/ bundle/` (или случайный тестовый пакет: "
                                            "`cosyvoice-rk make-random-bundle`)"),
    (r"^cannot resample (\d+) Hz to (\d+) Hz", "частоту {0} Гц нельзя пересчитать; сохраните образец с частотой "
                                              "16000, 22050, 24000, 32000, 44100 или 48000 Гц"),
    (r"^the (?:prompt )?transcript is empty", "текст записи пуст: введите дословно то, что сказано в записи"),
    (r"^the transcript has (\d+) characters, the limit is (\d+)",
     "в тексте записи {0} символов, предел — {1}: возьмите запись 3–10 с и введите дословно её слова"),
    (r"^the name '(.+)' is taken by the saved voice '(.+)' \(.*\); choose another name, or save as '(.+)' to "
     r"replace it$",
     "имя «{0}» занято голосом «{1}» (имена, которые отличаются только регистром или знаками, хранятся в одной "
     "папке); выберите другое имя или сохраните под именем «{2}», чтобы заменить его"),
    (r"^a damaged voice is stored under the name '(.+)'", "под именем «{0}» хранится повреждённый голос; отметьте "
                                                          "«заменить», чтобы сохранить этот на его место, или "
                                                          "сначала удалите повреждённый"),
    (r"^voice '(.+)' is damaged \(.*\); repair it", "голос «{0}» повреждён; восстановите его, сохранив заново из "
                                                    "его записи, или удалите"),
    (r"^voice (\S+) is corrupt \(preset.json: .*\)", "файл описания голоса {0} не читается; голос оставлен "
                                                       "как есть"),
    (r"^voice (\S+) is corrupt \(preset.json lacks", "в описании голоса {0} нет имени, текста или записи; голос "
                                                     "оставлен как есть"),
    (r"^voice (\S+) is corrupt \(its prompt audio is missing\)", "у голоса {0} пропала запись; голос оставлен "
                                                                 "как есть"),
    (r"^voice folder (\S+) has no preset.json", "в папке голоса {0} нет файла описания (preset.json)"),
    (r"^there is no damaged voice '(.+)'", "повреждённого голоса «{0}» нет; список устарел, посмотрите снова"),
    (r"^the voice file is ([\d.]+) MB; exported voices are at most (\d+) MB$",
     "файл голоса весит {0} МБ; экспортированный голос — не больше {1} МБ"),
    (r"^the voice file is empty", "файл голоса пуст (0 байт); экспортируйте голос снова"),
    (r"^this is a zip file but not a voice file", "это zip-архив, но не файл голоса (внутри нет preset.json); "
                                                  "экспортируйте голос кнопкой «Экспорт»"),
    (r"^this is not a cosyvoice-rk voice file", "это не файл голоса cosyvoice-rk; экспортируйте голос кнопкой "
                                                "«Экспорт» или командой `cosyvoice-rk speakers export`"),
    (r"^the voice file has no prompt audio", "в файле голоса нет записи; экспортируйте голос снова"),
    (r"^the voice file has no (name|transcript)", "в файле голоса нет поля {0}; экспортируйте голос снова"),
    (r"^the voice file's (?:preset.json|language)", "описание голоса в файле повреждено; экспортируйте голос снова"),
    (r"^(\S+) in the voice file (?:inflates to|is larger than)",
     "{0} в файле голоса больше, чем может быть у голоса; файл повреждён или это не голос"),
    (r"^the voice file says its language is '(.+)'", "в файле голоса указан язык «{0}», который эта версия не "
                                                     "знает; экспортируйте его с языком ru, en, zh, ja или auto"),
    (r"^voice file (.+) does not exist$", "файла голоса {0} нет; выберите его снова"),
    (r"^the voice's features (?:cannot be used|did not read back)", "признаки голоса испорчены; сохраните голос "
                                                                    "заново из его записи"),
    (r"^(\S+) is not a token of this model's text tokenizer \(CosyVoice2Tokenizer",
     "{0} — нет такого токена в текстовом токенизаторе этой модели (CosyVoice2Tokenizer: в её cosyvoice3.yaml нет "
     "get_tokenizer.version: cosyvoice3, поэтому тегов произношения нет); напишите само слово"),
    (r"^unknown language '(.*)'; choose one of (.+)$", "неизвестный язык «{0}»; выберите один из: {1}"),
    (r"^unknown language '(.*)'$", "неизвестный язык «{0}»; выберите ru, en, zh, ja или auto"),
    (r"^voice name contains control characters", "в имени голоса есть управляющие символы (перевод строки, "
                                                 "невидимые знаки); уберите их"),
    (r"^a voice named '(.+)' was saved by someone else a moment ago", "голос «{0}» только что сохранил кто-то "
                                                                      "другой; выберите другое имя"),
    (r"^model bundle (.+) does not exist; ", "пакета модели {0} нет; сделайте его: `./cv download models/cosyvoice3`"
                                             ", затем `./cv convert models/cosyvoice3 models/bundle` (тестовый "
                                             "пакет: `./cv make-random-bundle`)"),
    (r"^(.+) is not a model bundle \(no manifest.json\)", "{0} — не пакет модели (нет manifest.json); сделайте "
                                                         "его командами `./cv download` и `./cv convert`"),
    (r"^(.+) is corrupt \(not readable JSON", "{0} повреждён (это не JSON); скопируйте пакет заново или "
                                             "сконвертируйте снова"),
    (r"^(.+) is not a cosyvoice-rk manifest", "{0} — не манифест cosyvoice-rk; сделайте пакет командами "
                                              "`./cv download` и `./cv convert`"),
    (r"^bundle (.+) has format version (.+), this cosyvoice-rk reads version (\d+)",
     "у пакета {0} версия формата {1}, эта версия cosyvoice-rk читает {2}; сконвертируйте чекпойнт заново"),
    (r"^(.+): section '(.+)' is missing", "в {0} нет раздела «{1}»; сконвертируйте чекпойнт заново"),
    (r"^bundle (.+) is for the engine '(.+)', which this version of cosyvoice-rk does not know \(it knows (.+)\); "
     r"update cosyvoice-rk or convert the checkpoint again with this version",
     "модель в {0} сделана для движка «{1}», которого эта версия cosyvoice-rk не знает (она знает {2}): обновите "
     "cosyvoice-rk или сконвертируйте чекпойнт заново этой версией"),
    (r"^bundle (.+) is incomplete: (.+) is missing", "пакет {0} неполный: нет файла {1}; скопируйте его заново"),
    (r"^bundle (.+): (\S+) has (\d+) bytes, the manifest says (\S+)",
     "в пакете {0} файл {1} размером {2} байт, а по манифесту {3} (обрезан или заменён); скопируйте пакет заново "
     "или сконвертируйте снова"),
    (r"^(temperature|seed|top-k|top-p) must be a whole number within (\S+)–(\S+)(?: \(-1 = random\))?, got (.+)$",
     "{0}: нужно целое число от {1} до {2}, получено {3}"),
    (r"^(temperature|seed|top-k|top-p) must be a number within (\S+)–(\S+), got (.+)$",
     "{0}: нужно число от {1} до {2}, получено {3}"),
    (r"^(temperature|seed|top-k|top-p) must be a number, got (.+)$", "{0}: нужно число, получено {1}"),
    (r"^bundle (.+): (\S+) is damaged", "файл {1} пакета модели повреждён (не совпадает с манифестом: ошибка "
                                       "копирования или сбой SD-карты/eMMC); скопируйте пакет заново или "
                                       "сконвертируйте снова"),
    (r"^the worker ran out of memory", "обработчику не хватило памяти на это задание; возьмите текст короче"),
    (r"^cancelled", "отменено"),
    (r"^the prompt gives only (\d+) speech tokens \(([\d.]+) s\); (\d+) or more",
     "образец даёт только {0} речевых токенов ({1} с); {2} и больше (образец от 3 с) клонируют голос надёжнее"),
    (r"^voice '(.+)': its saved (.+) did not pass the checks", "у голоса «{0}» сохранённые данные ({1}) не прошли "
                                                             "проверку (повреждены на диске?) и восстановлены из "
                                                             "его записи"),
    (r"^prompt contains invalid samples", "образец содержит недопустимые отсчёты (NaN или бесконечность); "
                                          "сохраните его заново как 16-битный WAV"),
    (r"^no voice named '(.+)'; saved voices: (.+)$", "нет голоса «{0}»; сохранённые голоса: {1}"),
    (r"^no voice named '(.+)'; no voices are saved yet$", "нет голоса «{0}»; сохранённых голосов пока нет"),
    (r"^a voice named '(.+)' already exists.*$", "голос «{0}» уже есть; выберите другое имя"),
    (r"^voice name is empty", "имя голоса пустое: дайте голосу имя"),
    (r"^voice name is (\d+) characters; use at most (\d+)$", "имя голоса длиной {0} символов; не более {1}"),
    (r"^the queue is full \((\d+) jobs waiting\)", "очередь заполнена (ожидают заданий: {0}); "
                                                    "попробуйте, когда одно из них завершится"),
    (r"^the worker process died while running this job \((.+)\); it is being restarted.*$",
     "процесс-обработчик упал во время этого задания ({0}); он перезапускается — запустите задание снова. "
     "Сохранённые голоса не затронуты"),
    (r"^the worker was restarted while running this job", "обработчик перезапущен во время этого задания; "
                                                          "запустите его снова"),
    (r"^the LLM produced no speech tokens for this text", "LLM не выдала речевых токенов для этого текста; "
                                                         "попробуйте другую температуру или зерно"),
    (r"^text has nothing to say", "в тексте нечего произносить: только знаки препинания или символы"),
    (r"^no model bundle: (.+)$", "нет пакета модели: {0}"),
    # the control-tag messages (pipeline/shared/text/tags.py) are in webui/i18n_modes.py
)]

_RU_MESSAGES += [(re.compile(p), r) for p, r in _modes.RU_MESSAGES + _asr.RU_MESSAGES + _setup.RU_MESSAGES]


def localize(message: str, lang: str) -> str:
    """A pipeline message in the page language (Russian for the messages above; English otherwise)."""
    if lang != "ru":
        return message
    for pattern, template in _RU_MESSAGES:
        m = pattern.match(message)
        if m:
            return template.format(*(re.sub(r"(\d) s\b", r"\1 с", g or "") for g in m.groups()))
    return message
