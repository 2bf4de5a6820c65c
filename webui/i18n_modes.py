"""Page text for the speech modes, speed and control tags (merged into :mod:`webui.i18n`), and the Russian of the
pipeline's messages about them (``pipeline/engines/cosyvoice3/modes.py``, ``pipeline/engines/cosyvoice3/tags.py``)."""

from __future__ import annotations

STRINGS: dict[str, tuple[str, str]] = {
    "speech_mode": ("Mode", "Режим"),
    "err_transcript_mode": ("Type exactly what the recording says, or choose “Another language” or “Instruction”, "
                            "which need no transcript.",
                            "Введите дословно то, что сказано в записи, или выберите «Другой язык» или «Инструкцию» — "
                            "им текст записи не нужен."),
    "speech_mode_info": ("A saved voice works in every mode; another language and instruction need no transcript "
                         "of the recording.",
                         "Сохранённый голос работает в любом режиме; другому языку и инструкции текст записи не "
                         "нужен."),
    "m_zero_shot": ("Clone (the recording's words guide it)", "Клонирование (по словам записи)"),
    "m_cross_lingual": ("Another language (no transcript)", "Другой язык (без текста записи)"),
    "m_instruct": ("Instruction (how to speak)", "Инструкция (как говорить)"),
    "instruct": ("Instruction", "Инструкция"),
    "instruct_ph": ("How to speak, e.g. Please say a sentence in a very soft voice.",
                    "Как говорить, например: Please say a sentence in a very soft voice."),
    "instruct_info": ("English or Chinese, as the model was trained; the studio adds “You are a helpful assistant.” "
                      "and <|endofprompt|> itself.",
                      "По-английски или по-китайски, как училась модель; «You are a helpful assistant.» и "
                      "<|endofprompt|> студия добавит сама."),
    "instruct_examples": ("Upstream's instructions", "Инструкции из оригинала"),
    "ex_loud": ("As loudly as possible", "Как можно громче"),
    "ex_soft": ("In a very soft voice", "Очень тихо"),
    "ex_fast": ("As fast as possible (zh)", "Как можно быстрее (zh)"),
    "ex_slow": ("As slowly as possible (zh)", "Как можно медленнее (zh)"),
    "ex_happy": ("Very happily (zh)", "Очень радостно (zh)"),
    "ex_sad": ("Very sadly (zh)", "Очень грустно (zh)"),
    "ex_angry": ("Very angrily (zh)", "Очень сердито (zh)"),
    "ex_cantonese": ("In Cantonese (zh)", "На кантонском (zh)"),
    "ex_sichuan": ("In Sichuan dialect (zh)", "На сычуаньском диалекте (zh)"),
    "ex_robot": ("Like a robot (zh)", "Как робот (zh)"),
    "speed": ("Speed", "Скорость"),
    "speed_info": ("0.5–2.0, 1.0 = normal. Other than 1.0: each part is made whole and plays when it is done "
                   "(not streamed).",
                   "0.5–2.0, 1.0 — обычная. Не 1.0: каждая часть делается целиком и звучит, когда готова "
                   "(без потока)."),
    "insert_tag": ("Insert a tag", "Вставить тег"),
    "insert_tag_info": ("At the cursor; a span wraps the selected words", "В место курсора; парный тег обрамляет "
                                                                          "выделенные слова"),
    "t_breath": ("[breath] breath", "[breath] вдох"),
    "t_quick_breath": ("[quick_breath] quick breath", "[quick_breath] быстрый вдох"),
    "t_laughter": ("[laughter] laughter", "[laughter] смех"),
    "t_sigh": ("[sigh] sigh", "[sigh] вздох"),
    "t_cough": ("[cough] cough", "[cough] кашель"),
    "t_noise": ("[noise] noise", "[noise] шум"),
    "t_strong": ("<strong>…</strong> emphasis", "<strong>…</strong> выделение голосом"),
    "t_laughing": ("<laughter>…</laughter> laughing while speaking", "<laughter>…</laughter> со смехом"),
}

# (key of the label, upstream's instruction exactly as instruct_list has it, without prefix and <|endofprompt|>)
INSTRUCT_EXAMPLES: list[tuple[str, str]] = [
    ("ex_loud", "Please say a sentence as loudly as possible."),
    ("ex_soft", "Please say a sentence in a very soft voice."),
    ("ex_fast", "请用尽可能快地语速说一句话。"),
    ("ex_slow", "请用尽可能慢地语速说一句话。"),
    ("ex_happy", "请非常开心地说一句话。"),
    ("ex_sad", "请非常伤心地说一句话。"),
    ("ex_angry", "请非常生气地说一句话。"),
    ("ex_cantonese", "请用广东话表达。"),
    ("ex_sichuan", "请用四川话表达。"),
    ("ex_robot", "你可以尝试用机器人的方式解答吗？"),
]

# (key of the label, the tag; a span is inserted as its opening and closing tag around the selection)
TAG_MENU: list[tuple[str, str]] = [
    ("t_breath", "[breath]"), ("t_quick_breath", "[quick_breath]"), ("t_laughter", "[laughter]"), ("t_sigh", "[sigh]"),
    ("t_cough", "[cough]"), ("t_noise", "[noise]"), ("t_strong", "<strong></strong>"),
    ("t_laughing", "<laughter></laughter>"),
]

RU_MESSAGES: list[tuple[str, str]] = [
    (r"^the instruction is empty", "инструкция пуста: напишите, как говорить (например, «Speak very happily.»), или "
                                   "выберите клонирование или другой язык"),
    (r"^the instruction has (\d+) characters, the limit is (\d+)",
     "в инструкции {0} символов, предел — {1}: одно короткое предложение о том, как говорить"),
    (r"^the instruction may not contain <\|…\|> markup", "в инструкции не может быть разметки <|…|>: напишите только "
                                                         "саму инструкцию, «You are a helpful assistant.» и "
                                                         "<|endofprompt|> студия добавит сама"),
    (r"^the instruction must be text", "инструкция должна быть текстом"),
    (r"^an instruction is used only in the instruct mode \(the mode is (\S+)\)",
     "инструкция действует только в режиме инструкции (выбран режим {0}): выберите его или уберите инструкцию"),
    (r"^unknown mode '(.*)'", "неизвестный режим «{0}»: выберите zero_shot, cross_lingual или instruct"),
    (r"^speed must be from (\S+) to (\S+) \(1\.0 is normal\), not (.+)$",
     "скорость должна быть от {0} до {1} (1.0 — обычная), а не {2}"),
    (r"^speed must be a number from (\S+) to (\S+), not (.+)$", "скорость должна быть числом от {0} до {1}, а не {2}"),
    (r"^unknown tag (\S+): tags are lowercase: write (\S+);",
     "неизвестный тег {0}: теги пишутся строчными буквами, пишите {1}; чтобы он читался как текст, напишите его без "
     "скобок"),
    (r"^unknown tag (\S+): the tags CosyVoice3 knows are (.+) and pronunciation tags",
     "неизвестный тег {0}: CosyVoice3 знает теги {1} и теги произношения, например [AA1] или [ǐ]; чтобы он читался "
     "как текст, напишите его без скобок"),
    (r"^(\S+) is opened but not closed: add (\S+) where it ends",
     "тег {0} открыт, но не закрыт: добавьте {1} там, где выделение кончается, или уберите {0}"),
    (r"^(\S+) closes nothing: add (\S+) where the marked words begin",
     "тег {0} ничего не закрывает: добавьте {1} перед выделяемыми словами или уберите {0}"),
    (r"^(\S+) comes while (\S+) inside its span is still open",
     "тег {0} стоит там, где вложенный {1} ещё открыт: сначала закройте {1} (пары тегов вкладываются друг в друга, "
     "а не перекрещиваются)"),
    (r"^zero_shot needs the words of the prompt recording", "для клонирования нужен текст записи: введите его или "
                                                             "выберите другой язык или инструкцию — им текст не нужен"),
    (r"^speed (\S+): made without streaming", "скорость {0}: сделано без потока (скорость пересчитывает каждую часть "
                                              "целиком, в оригинале тоже только без потока); каждая часть звучит, "
                                              "когда готова"),
]
