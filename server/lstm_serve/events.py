"""Keyword events from per-frame posteriors (the manifest's ``keyword_events``).

:class:`KeywordSpotter` is streaming: feed it the posteriors of consecutive frames in
any chunking (frame 0 is the stream start) and it reports events as they happen.
Training evaluates its models with this very class, and the server uses it for
``StreamPredict``.

Semantics, per frame ``t`` (time ``t / frame_rate_hz`` seconds):

1. **Smoothing.** ``s[t]`` is the mean of the posteriors of frames
   ``max(0, t - smoothing_frames + 1) .. t`` (a causal moving average; at the stream
   start it averages the frames available so far).
2. **Candidate.** With no detection open, the keyword (a label not in
   ``background_labels``) with the highest ``s[t]`` opens a detection when that score
   is ``>= threshold`` and ``t`` is outside the refractory period. The open detection
   keeps its label and grows while its own smoothed score stays ``>= threshold``; the
   first frame below closes it. Its score is the peak smoothed score seen.
3. **Minimum length.** A detection that closes with fewer than ``min_frames`` frames is
   dropped silently. Only detections of at least ``min_frames`` frames are reported.
4. **Times.** ``start_s`` is the first frame's time; ``end_s`` is the time just after
   the last frame, ``(last + 1) / frame_rate_hz``.
5. **Partial and final.** At the end of each :meth:`KeywordSpotter.update` call, a
   detection that is still open and already ``min_frames`` long is reported once
   with ``is_final=False`` (its ``start_s`` never changes; ``end_s`` and ``score``
   grow as later calls re-report it). When it closes it is reported exactly once
   with ``is_final=True``. :meth:`KeywordSpotter.flush` closes an open detection at
   the end of the stream.
6. **Refractory.** After a final event, no detection opens before
   ``end_s + refractory_s``.

The list of final events is independent of how the posteriors are chunked (the
partial events, by nature, depend on the chunk boundaries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lstm_serve.manifest import KeywordPostprocess

__all__ = ["Event", "KeywordSpotter", "detect_events"]


@dataclass(frozen=True)
class Event:
    """One keyword detection; times in seconds from the stream start."""

    label: str
    start_s: float
    end_s: float
    score: float
    is_final: bool


@dataclass(frozen=True)
class SpotterState:
    """A :class:`KeywordSpotter` between two chunks: the smoothing window's last
    posteriors, the frame counter, the refractory end and the open detection."""

    history: np.ndarray
    frame: int
    blocked_until: int
    open: tuple[int, int, int, float] | None
    """label index, first frame, last frame, peak score."""


class KeywordSpotter:
    """Streaming keyword event detector; see the module docstring for the rules."""

    def __init__(
        self, postprocess: KeywordPostprocess, labels: Sequence[str], frame_rate_hz: float
    ) -> None:
        if frame_rate_hz <= 0:
            raise ValueError(f"frame_rate_hz must be positive, got {frame_rate_hz}")
        unknown = set(postprocess.background_labels) - set(labels)
        if unknown:
            raise ValueError(f"background labels {sorted(unknown)} are not in labels")
        self.postprocess = postprocess
        self.labels = list(labels)
        self.frame_rate_hz = float(frame_rate_hz)
        background = set(postprocess.background_labels)
        self._keywords = np.array(
            [i for i, lab in enumerate(self.labels) if lab not in background], dtype=np.int64
        )
        if self._keywords.size == 0:
            raise ValueError("every label is a background label; nothing to spot")
        self._window = postprocess.smoothing_frames
        self._history = np.zeros((0, len(self.labels)), np.float64)
        self._frame = 0  # index of the next frame
        self._blocked_until = 0  # first frame at which a new detection may open
        self._open: tuple[int, int, int, float] | None = None  # label, start, last, peak

    def snapshot(self) -> SpotterState:
        """This detector's state, as a value."""
        history = np.array(self._history, copy=True)
        history.flags.writeable = False
        return SpotterState(history, self._frame, self._blocked_until, self._open)

    @classmethod
    def restore(
        cls, postprocess: KeywordPostprocess, labels: Sequence[str], frame_rate_hz: float, state: SpotterState
    ) -> KeywordSpotter:
        """A detector that continues exactly where ``state`` was taken."""
        spotter = cls(postprocess, labels, frame_rate_hz)
        spotter._history = np.array(state.history, dtype=np.float64)
        spotter._frame = state.frame
        spotter._blocked_until = state.blocked_until
        spotter._open = state.open
        return spotter

    @property
    def frames_seen(self) -> int:
        """Frames processed so far."""
        return self._frame

    def _smooth(self, posteriors: np.ndarray) -> np.ndarray:
        joined = np.concatenate([self._history, posteriors.astype(np.float64)])
        n_new = posteriors.shape[0]
        first = self._frame
        out = np.empty((n_new, joined.shape[1]))
        offset = joined.shape[0] - n_new  # row of the first new frame in ``joined``
        for j in range(n_new):
            t = first + j
            lo = max(0, t - self._window + 1) - (first - offset)
            out[j] = joined[lo : offset + j + 1].mean(axis=0)
        self._history = joined[max(joined.shape[0] - (self._window - 1), 0) :]
        return out

    def _event(self, is_final: bool) -> Event:
        assert self._open is not None
        label, start, last, peak = self._open
        return Event(
            label=self.labels[label],
            start_s=start / self.frame_rate_hz,
            end_s=(last + 1) / self.frame_rate_hz,
            score=float(peak),
            is_final=is_final,
        )

    def _close(self) -> list[Event]:
        assert self._open is not None
        _, start, last, _ = self._open
        events: list[Event] = []
        if last - start + 1 >= self.postprocess.min_frames:
            events.append(self._event(True))
            end_s = (last + 1) / self.frame_rate_hz
            blocked = end_s + self.postprocess.refractory_s
            self._blocked_until = int(np.ceil(blocked * self.frame_rate_hz - 1e-9))
        self._open = None
        return events

    def update(self, posteriors: np.ndarray) -> list[Event]:
        """Process the next frames' posteriors ``[T, C]``; return new events."""
        post = np.asarray(posteriors)
        if post.ndim != 2 or post.shape[1] != len(self.labels):
            raise ValueError(
                f"posteriors must be [T, {len(self.labels)}], got {list(post.shape)}"
            )
        if post.shape[0] == 0:
            return []
        smooth = self._smooth(post)
        threshold = self.postprocess.threshold
        if self._open is None and not (smooth[:, self._keywords] >= threshold).any():
            # no keyword crosses the threshold and none is open: nothing can start or end
            self._frame += smooth.shape[0]
            return []
        events: list[Event] = []
        for j in range(smooth.shape[0]):
            t = self._frame + j
            row = smooth[j]
            if self._open is not None:
                label, start, _, peak = self._open
                if row[label] >= threshold:
                    self._open = (label, start, t, max(peak, float(row[label])))
                    continue
                events.extend(self._close())
            if t >= self._blocked_until:
                best = int(self._keywords[np.argmax(row[self._keywords])])
                if row[best] >= threshold:
                    self._open = (best, t, t, float(row[best]))
        self._frame += smooth.shape[0]
        if self._open is not None:
            _, start, last, _ = self._open
            if last - start + 1 >= self.postprocess.min_frames:
                events.append(self._event(False))
        return events

    def flush(self) -> list[Event]:
        """End of stream: close an open detection (reported final if long enough)."""
        if self._open is None:
            return []
        return self._close()


def detect_events(
    posteriors: np.ndarray,
    postprocess: KeywordPostprocess,
    labels: Sequence[str],
    frame_rate_hz: float,
) -> list[Event]:
    """The final events of a whole posterior sequence (one update plus flush)."""
    spotter = KeywordSpotter(postprocess, labels, frame_rate_hz)
    events = spotter.update(posteriors) + spotter.flush()
    return [e for e in events if e.is_final]
