"""What a run is about to do, before it does it: items, generations and judge calls, how many of
them the cache already holds, and the requests it will send to API servers.

Counted from the planned requests and the cache (evaluation.Evaluation.cost) before anything is
generated, so that a user gating a large model, or paying per request, knows first. A planned
generation the cache lacks is counted as a judge call too: its verdict cannot be cached yet. So is
a fine-tuned item's: what its adapter trains on is generated first, so its cache key is not known.
Not counted: retries (a request that fails is sent again, up to ``--instrumental-max-retries``),
a judge's one preflight call, and the pro_ic answers a fine-tuning attack trains on when they are
not items of the run (training_data.py generates and judges them first).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Cost:
    items: int
    answers: int  # items x epochs
    generations: int  # distinct generations the answers need (identical requests generate once)
    cached_generations: int
    judge_calls: int  # answers to judge
    cached_verdicts: int
    sends: dict[str, int] = field(default_factory=dict)  # "model M at URL" / "judge J at URL" -> requests
    recorded_verdicts: int = 0  # answers whose verdict a recording holds (--judge=replay): no call

    @property
    def to_generate(self) -> int:
        return self.generations - self.cached_generations

    @property
    def to_judge(self) -> int:
        return self.judge_calls - self.cached_verdicts

    def line(self) -> str:
        answers = f" ({self.answers} answers)" if self.answers != self.items else ""
        sent = sum(self.sends.values())
        where = "; ".join(f"{count} to {target}" for target, count in sorted(self.sends.items()) if count)
        requests = f"{sent} requests to send ({where})" if sent else "no requests to send"
        generations = (
            f"{self.to_generate} of {self.generations} generations to make ({self.cached_generations} cached)"
            if self.generations
            else "nothing to generate"
        )
        if self.judge_calls or not self.recorded_verdicts:
            judging = f"{self.to_judge} of {self.judge_calls} judge calls to make ({self.cached_verdicts} cached)"
            judging += f"; {self.recorded_verdicts} verdicts recorded" if self.recorded_verdicts else ""
        else:
            judging = f"no judge calls to make ({self.recorded_verdicts} verdicts recorded)"
        return f"instrumental plan: {self.items} items{answers}; {generations}; {judging}; {requests}"

    def document(self) -> dict[str, object]:
        """The results JSON's ``cost`` section."""
        return {
            "items": self.items,
            "answers": self.answers,
            "generations": self.generations,
            "cached_generations": self.cached_generations,
            "judge_calls": self.judge_calls,
            "cached_verdicts": self.cached_verdicts,
            "recorded_verdicts": self.recorded_verdicts,
            "requests": dict(sorted(self.sends.items())),
        }
