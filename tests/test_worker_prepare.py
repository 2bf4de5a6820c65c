"""The worker solves a newly saved voice's flow prompt cache after saving it, until the next job arrives."""

from types import SimpleNamespace

import pytest
from conftest import PROMPTS, ZH_PROMPT_TEXT

from pipeline.engines.cosyvoice3.engine import PromptCacheLRU
from pipeline.engines.cosyvoice3.tts import CosyVoiceRK
from pipeline.worker_child import _Runner

PROMPT = PROMPTS / "zero_shot_prompt.wav"


class Conn:
    def __init__(self, waiting: bool) -> None:
        self.sent, self.waiting = [], waiting

    def send(self, ev):
        self.sent.append(ev)

    def poll(self, *_a):
        return self.waiting


@pytest.fixture(scope="module")
def tts(random_bundle, tmp_path_factory):
    with CosyVoiceRK(random_bundle, speakers_dir=tmp_path_factory.mktemp("spk"), n_threads=1) as t:
        yield t


@pytest.mark.parametrize("job_waiting", [False, True])
def test_saved_voice_is_prepared_for_streaming_unless_a_job_waits(tts, job_waiting):
    assert tts.streams
    tts.engine.prompt_caches = PromptCacheLRU(1200)
    conn = Conn(job_waiting)
    runner = _Runner(tts, conn, SimpleNamespace(value=0))
    runner.run(1, "add_voice", {"name": f"v{int(job_waiting)}", "audio": PROMPT.read_bytes(),
                                "transcript": ZH_PROMPT_TEXT, "language": "zh", "overwrite": True})
    assert conn.sent[-1]["type"] == "done"
    assert len(tts.engine.prompt_caches) == (0 if job_waiting else 1)
