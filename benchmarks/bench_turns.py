"""Turn ends under ``semantic_vad`` (whisper's words) against ``server_vad``'s 500 ms window.

Two sets of utterances, spoken by the engine's own voice (Piper, several realtime voices):

* complete: a whole sentence, then silence. Measured: the wait from the last speech sample to
  the moment the detector ends the turn (the feed that returns ``speech_stopped``), p50 / p95,
  and the share of turns ended within 300 ms of the last speech;
* cut off: the same sentence stopped part-way, after the word marked ``|`` (40-70 % of its words,
  where the sentence cannot end), then silence, as if the speaker paused mid-sentence. The cut is
  placed at the end of that word, found by whisper's word timestamps on the whole sentence.
  Measured: how often the turn is ended before the eagerness's maximum wait, i.e. the person is
  cut off.

Everything runs in audio time: the clips are fed to :class:`TurnDetector` in 20 ms chunks and
the milliseconds of audio are counted until the turn ends, so CPU load does not change the
figures. The detectors judge as the engine's do: at a pause whisper transcribes the turn up to
it (:meth:`Transcriber.hear`, one thread) and the detector resumes with how it ended; the
transcription's wall-clock cost is printed apart (in the engine it runs during the pause,
started by speculation). ``semantic_vad auto, Smart Turn`` is the same rule judged by Smart Turn
v3.2 alone, as before whisper's words were used. The baseline is ``server_vad`` with
``silence_duration_ms`` 500 on the same clips in the same run; the ratios are semantic /
baseline. Piper draws noise for each synthesis, so figures move a little from run to
run; ``--repeat`` synthesizes every sentence more times.

Run: ``python benchmarks/bench_turns.py [--repeat N] [--dump]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import soxr

from _measure import percentile
from aoai_realtime.engine.speech import SpeechDetector, Synthesizer, missing_local_extra
from aoai_realtime.engine.speech.stt import Transcriber
from aoai_realtime.engine.speech.turn import EndOfTurnModel
from aoai_realtime.engine.speech.vad import EAGERNESS, TurnDetector

SENTENCES = [
    "Could you tell me what the | weather will be like in Paris tomorrow?",
    "I would like to order a | large pizza with mushrooms and olives.",
    "What would be a good name for a | small grey cat that likes to sleep?",
    "Please remind me to call my | sister after dinner tonight.",
    "How long does it take to | drive from Boston to New York?",
    "Tell me a short story about a | dragon who learns to bake bread.",
    "Can you set an alarm for | seven thirty tomorrow morning?",
    "My flight to London leaves at | nine in the morning on Friday.",
    "Which of these two restaurants has the | better reviews for dinner?",
    "I need to buy some milk and | eggs on the way home.",
    "Do you know if the museum is open on | Sunday afternoons in winter?",
    "We are planning a trip to the | mountains next month with the kids.",
    "What is the best way to | learn a new language as an adult?",
    "Could you play some relaxing music from the | nineteen seventies for me?",
    "The package should arrive at my | office before noon on Tuesday.",
    "Send a message to my brother saying that | I will be late tonight.",
    "How many cups of flour do I | need for a chocolate cake?",
    "Turn off the lights in the | kitchen and the living room.",
    "I was wondering whether you could | help me with my homework tonight.",
    "Book a table for four people at | seven o'clock on Saturday evening.",
    "What time does the last train to | the airport leave tonight?",
    "Can you explain how a | rainbow forms after a summer storm?",
    "Add bananas and a loaf of | bread to my shopping list.",
    "Remind me where I parked the car when | we leave the cinema.",
]
SHORT = [
    "Hello there.",
    "Yes.",
    "No, thanks.",
    "Thank you!",
    "What time is it?",
    "Good morning.",
    "Okay.",
    "Sounds good.",
    "Tell me a joke.",
    "Who are you?",
    "Stop.",
    "Goodbye.",
]
"""Short replies, spoken whole (a third set: people answer so, and both models are least sure
of them)."""
VOICES = ["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse"]
RATE = 24000
BYTES_PER_MS = RATE // 1000 * 2  # PCM16 mono
CHUNK_MS = 20
LEAD_MS = 500  # silence before the speech
TAIL_MS = 9000  # silence after it: longer than the longest maximum wait (low, 8 s)
BASELINE_SILENCE_MS = 500
WITHIN_MS = 300


@dataclass
class Clip:
    kind: str  # "complete", "cut" or "short" (a short reply, complete)
    text: str
    voice: str
    pcm: bytes
    speech_end_ms: float  # the last speech sample, from the start of the clip


@dataclass
class Outcome:
    ends: list[tuple[int, int]] = field(default_factory=list)  # (audio_end_ms, emitted at ms)
    checks: list[str] = field(default_factory=list)  # each judgement, for --dump
    hearing_ms: list[float] = field(default_factory=list)  # wall clock of each transcription


def speech_end_ms(samples: np.ndarray) -> float:
    """The end of the last 10 ms with speech energy (above -50 dBFS)."""
    block = RATE // 100
    n = samples.shape[0] // block
    rms = np.sqrt(np.mean(samples[: n * block].reshape(n, block) ** 2, axis=1))
    loud = np.nonzero(rms > 10 ** (-50 / 20))[0]
    return float((loud[-1] + 1) * 10) if loud.shape[0] else 0.0


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def make_clips(tts: Synthesizer, words_model: object, repeat: int) -> tuple[list[Clip], int]:
    """Short replies, and complete and cut-off clips of every sentence (``repeat`` syntheses
    each); also how many cuts fell back on an estimate because whisper's words did not line up
    with the text."""
    clips: list[Clip] = []
    estimated = 0
    lead = np.zeros(LEAD_MS * RATE // 1000, dtype=np.float32)
    tail = np.zeros(TAIL_MS * RATE // 1000, dtype=np.float32)

    def spoken(kind: str, text: str, voice: str) -> np.ndarray:
        """Synthesize ``text``, keep it as a clip of ``kind``; its samples."""
        audio = np.frombuffer(b"".join(tts.synthesize(text, voice=voice)), "<i2")
        speech = audio.astype(np.float32) / 32768.0
        whole = pcm16(np.concatenate([lead, speech, tail]))
        clips.append(Clip(kind, text, voice, whole, LEAD_MS + speech_end_ms(speech)))
        return speech

    for r in range(repeat):
        for i, text in enumerate(SHORT):
            spoken("short", text, VOICES[(i + r * 3) % len(VOICES)])
        for i, marked in enumerate(SENTENCES):
            text = marked.replace(" | ", " ")
            n_prefix = len(marked.split(" | ")[0].split())
            voice = VOICES[(i + r * 3) % len(VOICES)]
            speech = spoken("complete", text, voice)
            end = speech_end_ms(speech)
            cut_ms, exact = cut_point(words_model, speech, text, n_prefix, end)
            estimated += not exact
            part = speech[: int(cut_ms * RATE / 1000)]
            prefix = " ".join(text.split()[:n_prefix])
            clips.append(
                Clip(
                    "cut",
                    prefix,
                    voice,
                    pcm16(np.concatenate([lead, part, tail])),
                    LEAD_MS + speech_end_ms(part),
                )
            )
    return clips, estimated


def cut_point(
    words_model: object, speech: np.ndarray, text: str, n_prefix: int, end_ms: float
) -> tuple[float, bool]:
    """Where word ``n_prefix`` of ``text`` ends in ``speech`` (ms): half-way into the gap to the
    next word, at most 40 ms after it. Whisper's word timestamps on the whole sentence; if its
    words do not line up with the text, the share of characters is used instead."""
    audio16 = soxr.resample(speech, RATE, 16000)
    segments, _ = words_model.transcribe(  # type: ignore[attr-defined]
        audio16, beam_size=1, language="en", word_timestamps=True, vad_filter=False
    )
    words = [w for s in segments for w in (s.words or [])]
    if len(words) == len(text.split()):
        this, after = words[n_prefix - 1], words[n_prefix]
        gap = max(0.0, after.start - this.end)
        return 1000 * (this.end + min(0.04, gap / 2)), True
    chars = len(" ".join(text.split()[:n_prefix])) / len(text)
    return end_ms * chars, False


def run(clip: Clip, detector: TurnDetector, stt: Transcriber) -> Outcome:
    """Feed ``clip`` in 20 ms chunks: where each turn ended and when (ms of audio fed), and
    every judgement. A pause that awaits its judgement is transcribed from the turn's
    ``audio_start_ms`` to the pause, as the engine does."""
    out = Outcome()
    step = CHUNK_MS * RATE // 1000 * 2
    seen = None
    start_ms = 0
    for i in range(0, len(clip.pcm), step):
        events = detector.feed(clip.pcm[i : i + step])
        while True:
            for event in events:
                if event.kind == "speech_started":
                    start_ms = event.audio_ms
                else:
                    out.ends.append((event.audio_ms, detector.total_ms))
            pending = detector.awaiting
            if pending is None:
                break
            began = time.perf_counter()
            heard = stt.hear(clip.pcm[start_ms * BYTES_PER_MS : pending.pause_ms * BYTES_PER_MS])
            out.hearing_ms.append((time.perf_counter() - began) * 1000)
            events = detector.resume(heard.ending)
        check = detector.last_check
        if check is not seen:
            seen = check
            if check is not None:
                e, p = check.ending, check.probability
                words = f"{e.mark or '-'} {e.mark_logprob:.2f}/{e.word_logprob:.2f}" if e else ""
                smart_turn = f"p={p:.2f}" if p is not None else ""
                out.checks.append(" ".join(x for x in (words, smart_turn) if x))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="syntheses of each sentence")
    parser.add_argument("--dump", action="store_true", help="print every clip's outcome")
    args = parser.parse_args()
    problem = missing_local_extra()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    os.environ["HF_HUB_OFFLINE"] = "1"
    import faster_whisper

    from aoai_realtime.engine.speech.stt import model_dir

    tts = Synthesizer(threads=2)
    words_model = faster_whisper.WhisperModel(
        str(model_dir()), device="cpu", compute_type="int8", cpu_threads=2
    )
    clips, estimated = make_clips(tts, words_model, args.repeat)
    del words_model
    stt = Transcriber(cpu_threads=1)
    complete = [c for c in clips if c.kind == "complete"]
    cut = [c for c in clips if c.kind == "cut"]
    short = [c for c in clips if c.kind == "short"]
    print(
        f"{len(complete)} complete and {len(cut)} cut-off utterances, {len(short)} short "
        f"replies, {len(VOICES)} voices "
        f"({estimated} cuts placed by estimate); fed in {CHUNK_MS} ms chunks, audio time"
    )

    configs: list[tuple[str, dict[str, object]]] = [
        (f"server_vad {BASELINE_SILENCE_MS} ms", {"silence_duration_ms": BASELINE_SILENCE_MS}),
        ("semantic auto, Smart Turn", {"eagerness": "auto"}),
        *(
            (f"semantic_vad {e}", {"eagerness": e, "hears_words": True})
            for e in ("high", "auto", "medium", "low")
        ),
    ]
    hearing: list[float] = []
    rows = []
    for name, options in configs:
        waits: list[float] = []
        short_waits: list[float] = []
        splits = 0
        early = 0
        max_wait = (
            EAGERNESS[str(options["eagerness"])].max_wait_ms
            if "eagerness" in options
            else min(r.max_wait_ms for r in EAGERNESS.values())
        )
        for clip in clips:
            detector = TurnDetector(SpeechDetector(), **options)  # type: ignore[arg-type]
            out = run(clip, detector, stt)
            hearing += out.hearing_ms
            if clip.kind in ("complete", "short"):
                inside = [e for e in out.ends if e[1] < clip.speech_end_ms]
                splits += bool(inside)
                wait = out.ends[-1][1] - clip.speech_end_ms if out.ends else float("nan")
                (waits if clip.kind == "complete" else short_waits).append(wait)
                label = f"wait {wait:6.0f} ms"
            else:
                cut_early = any(emitted - end < max_wait for end, emitted in out.ends)
                early += cut_early
                label = "ENDED EARLY" if cut_early else "waited"
            if args.dump:
                checks = "; ".join(out.checks)
                print(f"  {name:26} {clip.kind:8} {clip.voice:7} {label:14} [{checks}] {clip.text}")
        rows.append((name, waits, splits, early, max_wait, short_waits))

    base_p50 = percentile(rows[0][1], 0.5)
    base_p95 = percentile(rows[0][1], 0.95)
    print()
    print(
        f"{'':26} {'complete: wait after last speech':>34} {'within':>8} {'split':>6}  "
        f"{'cut off: ended early':>22}  {'short: p50, within':>18}"
    )
    print(
        f"{'':26} {'p50 ms':>9} {'p95 ms':>8} {'x base p50':>10} {'x p95':>6} "
        f"{WITHIN_MS:>5} ms {'':>6}  {'(before max wait)':>22}"
    )
    for name, waits, splits, early, max_wait, short_waits in rows:
        p50, p95 = percentile(waits, 0.5), percentile(waits, 0.95)
        within = sum(w <= WITHIN_MS for w in waits) / len(waits)
        short_within = sum(w <= WITHIN_MS for w in short_waits) / len(short_waits)
        print(
            f"{name:26} {p50:9.0f} {p95:8.0f} {p50 / base_p50:10.2f} {p95 / base_p95:6.2f} "
            f"{within:8.0%} {splits:>6}  {early:>4}/{len(cut):<3} {early / len(cut):5.0%} "
            f"(max {max_wait / 1000:.0f} s)  {percentile(short_waits, 0.5):7.0f} ms "
            f"{short_within:5.0%}"
        )
    print(
        f"\nsplit: complete utterances ended before their last word; within: ended at most "
        f"{WITHIN_MS} ms after the last speech sample; ratios are against {rows[0][0]}"
    )
    model = EndOfTurnModel.shared()
    window = np.frombuffer(clips[0].pcm, "<i2")[: 8 * RATE].astype(np.float32) / 32768
    window16 = soxr.resample(window, RATE, 16000)
    costs = []
    for _ in range(10):
        start = time.perf_counter()
        model.probability(window16)
        costs.append((time.perf_counter() - start) * 1000)
    print(
        f"one Smart Turn check (wall clock, one thread, features included): "
        f"p50 {percentile(costs, 0.5):.0f} ms"
    )
    print(
        f"one transcription of the turn for its judgement (wall clock, one thread): "
        f"p50 {percentile(hearing, 0.5):.0f} ms, p95 {percentile(hearing, 0.95):.0f} ms "
        f"({len(hearing)} pauses)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
