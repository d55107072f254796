"""``semantic_vad``: at each pause whisper's words (and Smart Turn v3.2) decide whether the
utterance is complete.

Everything is measured in audio time (milliseconds of audio fed), never by the wall clock, and
every test sets what the judgement did against what silence alone would have done, so a
detector that stopped judging fails. The Smart Turn sentences were chosen for their margin over
many noisy syntheses: the complete question scores 0.96-0.99 (the thresholds are 0.7 and 0.9),
the cut-off one 0.01-0.82 (``low`` needs 0.95); its trailing comma gives Piper the continuing
pitch of a speaker who pauses mid-sentence. The test speech is steady (the same samples every
run), so whisper's words are the same too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from aoai_realtime.engine.speech import turn
from aoai_realtime.engine.speech.stt import Ending
from aoai_realtime.engine.speech.vad import (
    EAGERNESS,
    FALLBACK_SILENCE_MS,
    TurnDetector,
    TurnEvent,
)
from helpers import ENGINE_SCRIPT, connect, engine_thread

BYTES_PER_MS = 48  # PCM16 mono 24 kHz
COMPLETE = "Can you explain how a rainbow forms after a summer storm?"
CUT_OFF = "I would like to order a,"
STOPPED = "Tell me a story about"  # whisper writes no closing mark: it hears no end
TRAILING = "Please remind me to call my"  # whisper adds a full stop, unsure of it
WORDS_ONLY = "Do you know if the museum is open on Sunday afternoons in winter?"
SURE_END = Ending(".", -0.05, -0.01, -0.03)
NO_END = Ending("", float("-inf"), -0.9, float("-inf"))

pytestmark = pytest.mark.skipif(
    not turn.available(), reason="the end-of-turn model's package (pipecat-ai) is not installed"
)


def _feed(detector: TurnDetector, pcm: bytes, chunk: int = 20 * BYTES_PER_MS) -> list[Any]:
    """Feed ``pcm`` in chunks: each event with the ms of audio fed when it came."""
    out: list[tuple[TurnEvent, int]] = []
    for i in range(0, len(pcm), chunk):
        out += [(e, detector.total_ms) for e in detector.feed(pcm[i : i + chunk])]
    return out


def _kinds(events: list[tuple[TurnEvent, int]]) -> list[str]:
    return [e.kind for e, _ in events]


@pytest.fixture(scope="module")
def complete(tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]) -> bytes:
    return silence(500) + tts_wav(COMPLETE) + silence(9000)


@pytest.fixture(scope="module")
def cut_off(tts_wav: Callable[..., bytes], silence: Callable[[int], bytes]) -> bytes:
    return silence(500) + tts_wav(CUT_OFF) + silence(8500)


# ------------------------------------------------------------------------------- the model


def _pipecat_extractor() -> Callable[[np.ndarray], np.ndarray]:
    import importlib.util

    spec = importlib.util.find_spec("pipecat")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations)))
    path = path / "audio" / "turn" / "smart_turn" / "_whisper_features.py"
    loaded = importlib.util.spec_from_file_location("pipecat_whisper_features", path)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    extract: Callable[[np.ndarray], np.ndarray] = module.compute_whisper_log_mel_features
    return extract


def test_features_are_the_ones_smart_turn_was_trained_on(tts_wav: Callable[..., bytes]) -> None:
    # pipecat's own extractor (numpy only, in the same wheel) is the reference for the model's
    # input; it is loaded from its file, as pipecat itself is installed without its dependencies
    compute_whisper_log_mel_features = _pipecat_extractor()

    speech = np.frombuffer(tts_wav(COMPLETE), "<i2").astype(np.float32) / 32768
    audio = soxr.resample(speech, 24000, 16000).astype(np.float32)
    assert audio.shape[0] < turn.WINDOW_SAMPLES
    ours = turn.log_mel_features(audio)
    padded = np.concatenate([np.zeros(turn.WINDOW_SAMPLES - audio.shape[0], np.float32), audio])
    assert ours.shape == (80, 800) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, compute_whisper_log_mel_features(padded), atol=1e-5)
    # longer than 8 s: the model hears the last 8 s
    long = np.concatenate([audio, audio, audio])
    np.testing.assert_allclose(
        turn.log_mel_features(long),
        compute_whisper_log_mel_features(long[-turn.WINDOW_SAMPLES :]),
        atol=1e-5,
    )


def test_eagerness_sets_the_model_threshold_and_the_services_maximum_wait(
    speech_stack: Any,
) -> None:
    waits = {e: EAGERNESS[e].max_wait_ms for e in ("low", "medium", "high", "auto")}
    assert waits == {"low": 8000, "medium": 4000, "high": 2000, "auto": 4000}
    assert EAGERNESS["auto"] == EAGERNESS["medium"]
    low, medium, high = EAGERNESS["low"], EAGERNESS["medium"], EAGERNESS["high"]
    assert low.threshold > medium.threshold > high.threshold
    # low needs whisper surer of the end than medium, medium than high
    assert low.mark_logprob > medium.mark_logprob > high.mark_logprob
    assert low.confirm_mark_logprob > medium.confirm_mark_logprob > high.confirm_mark_logprob
    assert low.confirm_threshold >= medium.confirm_threshold >= high.confirm_threshold
    assert low.short_threshold > medium.short_threshold > high.short_threshold
    detector = TurnDetector.semantic("high", speech_stack.new_detector())
    assert detector.rule == EAGERNESS["high"] and detector.silence_duration_ms == 2000
    assert speech_stack.new_turn_detector().rule is None  # server_vad asks no model
    with pytest.raises(ValueError, match="eagerness"):
        speech_stack.new_turn_detector(eagerness="eager")


def test_without_the_model_eagerness_falls_back_on_pause_lengths(
    speech_stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn, "available", lambda: False)
    detector = speech_stack.new_turn_detector(eagerness="high")
    assert detector.rule is None and detector.silence_duration_ms == FALLBACK_SILENCE_MS["high"]


# ------------------------------------------------------------------------------- the detector


@pytest.mark.parametrize("eagerness", ["high", "auto"])
def test_a_complete_sentence_ends_at_its_pause(
    speech_stack: Any, complete: bytes, eagerness: str
) -> None:
    baseline = _feed(speech_stack.new_turn_detector(silence_duration_ms=500), complete)
    detector = speech_stack.new_turn_detector(eagerness=eagerness)
    events = _feed(detector, complete)
    assert _kinds(events) == _kinds(baseline) == ["speech_started", "speech_stopped"]
    (started, _), (stopped, at_ms) = events
    # the client sees the same events as under server_vad: the speech starts and its pause
    # begins on the same frames; only the moment the turn ends differs
    assert started == baseline[0][0] and stopped == baseline[1][0]
    check = detector.last_check
    assert check is not None and check.complete and check.pause_ms == stopped.audio_ms
    assert check.probability >= EAGERNESS[eagerness].threshold
    # The model ended it at the pause (64 ms, plus a chunk and the resampler's delay). Silence
    # alone would have waited this eagerness's maximum (2 s, 4 s); low's is 8 s; server_vad
    # ended it after its 500 ms window.
    assert at_ms - stopped.audio_ms <= 200
    assert at_ms - stopped.audio_ms < EAGERNESS[eagerness].max_wait_ms // 4
    assert at_ms < baseline[1][1] - 300


def test_a_cut_off_sentence_is_not_ended_at_its_pause_under_low(
    speech_stack: Any, cut_off: bytes
) -> None:
    rule = EAGERNESS["low"]
    # silence alone, with the pause the model is asked at, would end the turn right there
    hasty = _feed(speech_stack.new_turn_detector(silence_duration_ms=rule.pause_ms), cut_off)
    hasty_stops = [at for e, at in hasty if e.kind == "speech_stopped"]
    assert hasty_stops
    detector = speech_stack.new_turn_detector(eagerness="low")
    events = _feed(detector, cut_off)
    assert _kinds(events) == ["speech_started", "speech_stopped"]
    stopped, at_ms = events[1]
    check = detector.last_check
    assert check is not None and not check.complete and check.probability < rule.threshold
    assert check.pause_ms == stopped.audio_ms  # the pause the model heard is the final one
    # it waited the whole maximum instead (a frame and a chunk more at most)
    assert rule.max_wait_ms <= at_ms - stopped.audio_ms <= rule.max_wait_ms + 100
    assert at_ms > hasty_stops[0] + 7000


def test_semantic_turns_do_not_depend_on_chunk_sizes(speech_stack: Any, complete: bytes) -> None:
    reference_detector = speech_stack.new_turn_detector(eagerness="auto")
    reference = [e for e, _ in _feed(reference_detector, complete)]
    check = reference_detector.last_check
    assert check is not None and len(reference) == 2
    for chunk in (100 * BYTES_PER_MS, 777, 7 * BYTES_PER_MS + 1):
        detector = speech_stack.new_turn_detector(eagerness="auto")
        assert [e for e, _ in _feed(detector, complete, chunk)] == reference, chunk
        assert detector.last_check == check  # the model heard exactly the same audio


# ------------------------------------------------------------------------------- the words


def test_whisper_hears_whether_an_utterance_ended(
    speech_stack: Any, tts_wav: Callable[..., bytes]
) -> None:
    heard = speech_stack.stt.hear(tts_wav(COMPLETE))
    assert heard.text == COMPLETE
    assert heard.ending is not None and heard.ending.mark == "?"
    assert heard.ending.words == len(COMPLETE.split())
    stopped = speech_stack.stt.hear(tts_wav(STOPPED))
    trailing = speech_stack.stt.hear(tts_wav(TRAILING))
    assert stopped.ending is not None and stopped.ending.mark == ""
    assert trailing.ending is not None and trailing.ending.mark == "."
    for eagerness, rule in EAGERNESS.items():
        assert rule.finished(heard.ending), eagerness
        for cut in (stopped.ending, trailing.ending):
            # not finished, and not even closed surely enough for Smart Turn to end it
            assert not rule.finished(cut) and not rule.needs_confirmation(cut), (eagerness, cut)
    # the same rule on the two numbers: a sure mark after a sure word, not otherwise
    rule = EAGERNESS["auto"]
    assert rule.finished(Ending("?", -0.1, -0.1, -0.1))
    assert not rule.finished(Ending("?", -0.1, -1.5, -0.1))  # an invented last word
    assert not rule.finished(Ending(".", -1.2, -0.1, -0.5))  # a hesitant full stop
    hello = Ending(".", -0.6, -0.4, -0.2, words=2)  # "Hello there."
    assert not rule.finished(hello) and rule.needs_confirmation(hello)
    assert rule.confirmation_threshold(hello) == rule.short_threshold < rule.confirm_threshold
    assert rule.confirmation_threshold(Ending(".", -0.6, -0.4, -0.2, words=6)) == (
        rule.confirm_threshold
    )
    # no mark: only when whisper was all but certain that the text ends after the last word
    assert rule.finished(Ending("", float("-inf"), -0.01, -0.05))
    assert not rule.finished(Ending("", float("-inf"), -0.01, -0.6))


def _feed_heard(
    detector: TurnDetector, pcm: bytes, ending: Ending | None, chunk: int = 20 * BYTES_PER_MS
) -> tuple[list[tuple[TurnEvent, int]], list[Any]]:
    """Feed ``pcm`` in chunks; every pause that awaits its judgement gets ``ending``. The events
    with the ms of audio fed when each came, and the pauses that awaited."""
    out: list[tuple[TurnEvent, int]] = []
    pauses: list[Any] = []
    for i in range(0, len(pcm), chunk):
        events = detector.feed(pcm[i : i + chunk])
        while detector.awaiting is not None:
            out += [(e, detector.total_ms) for e in events]
            pauses.append(detector.awaiting)
            events = detector.resume(ending)
        out += [(e, detector.total_ms) for e in events]
    return out, pauses


def test_a_pause_waits_for_its_judgement_and_audio_fed_meanwhile_is_kept(
    speech_stack: Any, complete: bytes
) -> None:
    baseline = _feed(speech_stack.new_turn_detector(silence_duration_ms=500), complete)
    detector = speech_stack.new_turn_detector(eagerness="auto", hears_words=True)
    events = _feed(detector, complete, len(complete))  # all 10 s at once, nothing judged after
    assert _kinds(events) == ["speech_started"]  # 9 s of silence, yet no speech_stopped
    pending = detector.awaiting
    assert pending is not None and pending.pause_ms == baseline[1][0].audio_ms
    assert pending.audio_ms - pending.pause_ms == EAGERNESS["auto"].pause_ms
    assert detector.now_ms == pending.audio_ms < detector.total_ms
    assert detector.feed(b"\x00\x00" * 2400) == []  # more audio: kept, still not judged
    # the judgement: the turn ends at the pause, and the kept silence holds nothing more
    assert detector.resume(SURE_END) == [baseline[1][0]]
    assert detector.awaiting is None and detector.now_ms == detector.total_ms
    check = detector.last_check
    assert check is not None and check.complete and check.ending == SURE_END
    assert check.probability is None  # the words decided: Smart Turn was not asked
    assert detector.resume(SURE_END) == []  # nothing awaits any more


def test_an_unfinished_judgement_waits_the_maximum(speech_stack: Any, complete: bytes) -> None:
    detector = speech_stack.new_turn_detector(eagerness="auto", hears_words=True)
    events, pauses = _feed_heard(detector, complete, NO_END)
    assert _kinds(events) == ["speech_started", "speech_stopped"] and len(pauses) == 1
    stopped, at_ms = events[1]
    assert stopped.audio_ms == pauses[0].pause_ms
    rule = EAGERNESS["auto"]
    assert rule.max_wait_ms <= at_ms - stopped.audio_ms <= rule.max_wait_ms + 100
    check = detector.last_check
    assert check is not None and not check.complete and check.ending == NO_END


def test_without_words_smart_turn_judges(speech_stack: Any, complete: bytes) -> None:
    # no ending (whisper heard nothing, or the audio was too long for one window)
    detector = speech_stack.new_turn_detector(eagerness="auto", hears_words=True)
    events, pauses = _feed_heard(detector, complete, None)
    assert _kinds(events) == ["speech_started", "speech_stopped"] and len(pauses) == 1
    check = detector.last_check
    assert check is not None and check.complete and check.ending is None
    assert check.probability is not None and check.probability >= EAGERNESS["auto"].threshold
    assert events[1][1] - events[1][0].audio_ms <= 200


def test_judged_turns_do_not_depend_on_chunk_sizes(speech_stack: Any, complete: bytes) -> None:
    reference, pauses = _feed_heard(
        speech_stack.new_turn_detector(eagerness="auto", hears_words=True), complete, SURE_END
    )
    assert _kinds(reference) == ["speech_started", "speech_stopped"]
    for chunk in (100 * BYTES_PER_MS, 777, 7 * BYTES_PER_MS + 1, len(complete)):
        detector = speech_stack.new_turn_detector(eagerness="auto", hears_words=True)
        events, seen = _feed_heard(detector, complete, SURE_END, chunk)
        assert [e for e, _ in events] == [e for e, _ in reference], chunk
        assert seen == pauses, chunk


# ------------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("eagerness", ["high", "auto"])
async def test_the_engine_ends_a_complete_turn_before_silence_could(
    scripted_engine: Any,
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
    eagerness: str,
) -> None:
    speech = tts_wav(COMPLETE)
    async with connect(scripted_engine) as rt:
        td = {"type": "semantic_vad", "eagerness": eagerness, "create_response": False}
        updated = await rt.update(audio={"input": {"turn_detection": td}})
        assert updated["session"]["audio"]["input"]["turn_detection"] == {
            **td,
            "interrupt_response": True,
        }
        # 1 s of silence: half of high's maximum wait, so only the judgement can end this turn
        await rt.append(silence(500) + speech + silence(1000))
        events = await rt.until("conversation.item.done")
        assert [e["type"] for e in events] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        started, stopped, committed, added, done = events
        item_id = started["item_id"]
        assert stopped["item_id"] == committed["item_id"] == added["item"]["id"] == item_id
        assert set(stopped) == {"type", "event_id", "audio_end_ms", "item_id"}
        assert 500 < started["audio_start_ms"] + 300 < stopped["audio_end_ms"]
        assert stopped["audio_end_ms"] <= 500 + len(speech) // BYTES_PER_MS
        assert done["item"]["content"][0]["type"] == "input_audio"


@pytest.mark.parametrize("eagerness", ["low", "auto"])
async def test_the_engine_waits_on_a_cut_off_turn(
    scripted_engine: Any,
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
    eagerness: str,
) -> None:
    speech = tts_wav(STOPPED)
    wait = EAGERNESS[eagerness].max_wait_ms
    async with connect(scripted_engine) as rt:
        td = {"type": "semantic_vad", "eagerness": eagerness, "create_response": False}
        await rt.update(audio={"input": {"turn_detection": td}})
        await rt.append(silence(500) + speech + silence(wait - 1000))
        # the engine handles a connection's events in order: once this update is answered,
        # every chunk before it has been through the turn detector
        await rt.update(instructions="Be brief.")
        assert rt.of_type("input_audio_buffer.speech_started")
        assert not rt.of_type("input_audio_buffer.speech_stopped")  # a long pause, still open
        await rt.append(silence(1200))  # past the maximum wait
        stopped = await rt.wait_for("input_audio_buffer.speech_stopped")
        assert stopped["audio_end_ms"] <= 500 + len(speech) // BYTES_PER_MS
        await rt.wait_for("input_audio_buffer.committed")


@pytest.mark.parametrize("speculation", [True, False])
async def test_the_engine_ends_a_turn_on_the_words_of_its_transcript(
    speech_stack: Any,
    tts_wav: Callable[..., bytes],
    silence: Callable[[int], bytes],
    speculation: bool,
) -> None:
    # The judgement waits for the pause's transcription, which becomes the turn's transcript.
    # With ``--no-speculation`` nothing transcribes the pause ahead, so the judgement starts
    # the transcription itself. Smart Turn alone
    # would keep this finished question open (it scores it about 0.04): only the words end it.
    speech = tts_wav(WORDS_ONLY)
    alone = _feed(
        speech_stack.new_turn_detector(eagerness="auto"), silence(500) + speech + silence(1000)
    )
    assert _kinds(alone) == ["speech_started"]
    for engine in engine_thread(
        speech_stack, brain="scripted", script=ENGINE_SCRIPT, speculation=speculation
    ):
        async with connect(engine) as rt:
            td = {"type": "semantic_vad", "eagerness": "auto", "create_response": False}
            await rt.update(
                audio={"input": {"turn_detection": td, "transcription": {"model": "whisper-1"}}}
            )
            # 1 s of silence, a quarter of auto's maximum wait: only the words can end the turn
            await rt.append(silence(500) + speech + silence(1000))
            stopped = await rt.wait_for("input_audio_buffer.speech_stopped")
            done = await rt.wait_for("conversation.item.input_audio_transcription.completed")
        assert stopped["audio_end_ms"] <= 500 + len(speech) // BYTES_PER_MS
        assert done["transcript"] == WORDS_ONLY
