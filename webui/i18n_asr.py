"""Page text for automatic prompt transcription (merged into :mod:`webui.i18n`) and the Russian of
:mod:`pipeline.shared.asr`'s messages."""

from __future__ import annotations

STRINGS: dict[str, tuple[str, str]] = {
    "asr_busy": ("Transcribing the recording…", "Распознаю текст записи…"),
    "asr_filled": ("Filled in from the recording ({model}, language {language}); check it and correct it if needed.",
                   "Заполнено по записи ({model}, язык {language}); проверьте и при необходимости исправьте."),
    "asr_empty": ("The speech recognition model heard no words in the recording; type what it says.",
                  "Модель распознавания речи не услышала в записи слов; введите, что в ней сказано."),
}

RU_MESSAGES: list[tuple[str, str]] = [
    (r"^automatic transcription needs the speech recognition model \(~500 MB\), not found in (.+): get it with "
     r"(.+); or type the transcript",
     "для автоматического распознавания текста записи нужна модель распознавания речи (~500 МБ), в {0} её нет: "
     "скачайте её командой {1} — или введите текст записи сами"),
    (r"^the speech recognition model in (.+) is incomplete \((.+) is missing\): run (.+) again",
     "модель распознавания речи в {0} скачана не полностью (нет {1}): запустите {2} ещё раз — загрузка "
     "продолжится с места остановки; или введите текст записи сами"),
    (r"^(.+asr\.json) cannot be read \((.+)\); get the model again with (.+)$",
     "файл {0} не читается ({1}); скачайте модель заново командой {2}"),
    (r"^the speech recognition model (\S+) in (.+) cannot be loaded \((.+)\); get it again with (.+)$",
     "модель распознавания речи {0} в {1} не загружается ({2}); скачайте её заново командой {3}"),
    (r"^no speech recognition model for language '(.+)' \(covered: (.+)\); type the transcript",
     "нет модели распознавания речи для языка «{0}» (есть: {1}); введите текст записи сами"),
    (r"^the onnx-asr package is not installed", "не установлен пакет onnx-asr: запустите ./cv ещё раз (он "
                                                "установит всё нужное) или pip install onnx-asr"),
    (r"^the recording cannot be read \((.+)\)", "запись не читается ({0}); сохраните её как WAV и попробуйте снова"),
    (r"^the recording has no samples to transcribe", "в записи нет звука для распознавания"),
    (r"^the recording contains invalid samples", "запись содержит недопустимые отсчёты (NaN или бесконечность); "
                                                 "сохраните её заново как 16-битный WAV"),
    (r"^the speech recognition model has no Whisper to detect the language",
     "в модели распознавания нет Whisper, чтобы определить язык; выберите язык записи"),
]
