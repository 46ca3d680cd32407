"""``python -m pytest_instrumental calibrate RECORDED --judge JUDGE --out FILE``: a judge measured
against labelled responses. The recorded run's verdicts (gpt-5.2's in the bundled reference runs,
or people's in a results JSON holding their labels) are the reference; the judge labels every
recorded response again, and its confusion matrix is written as a calibration file for
``--instrumental-judge-calibration`` (statistics/calibration.py)."""

from __future__ import annotations

from pathlib import Path

from pytest_instrumental.errors import InputError
from pytest_instrumental.judges.offline import OfflineJudge
from pytest_instrumental.judges.protocol import JudgeRequest
from pytest_instrumental.judges.registry import judge_name, open_judge
from pytest_instrumental.options import Settings
from pytest_instrumental.replay import recorded_answers
from pytest_instrumental.statistics.calibration import Calibration, write_calibration
from pytest_instrumental.vocabulary.verdicts import DECISIONS


def calibrate(recorded: Path, judge: str, out: Path) -> list[str]:
    """Measure ``judge`` against the verdicts recorded under ``recorded``; write ``out``."""
    answers = [(request, result) for request, result in recorded_answers(recorded) if result.status == "ok"]
    labelled = [(request, result) for request, result in answers if result.response is not None]
    if not labelled:
        raise InputError(f"{recorded} holds no judged response to calibrate against")
    settings = Settings(cache_dir=Path.cwd(), snapshot_dir=Path.cwd())
    name = judge_name(judge, replaying=False)
    opened = open_judge(
        name,
        generation=settings.generation,
        server=settings.server,
        serving=None,
        judging=settings.judging,
        recordings=None,
    ).judge
    try:
        if isinstance(opened, OfflineJudge):
            seen = opened.describe_agreement([result.response for _, result in labelled])
            if seen.startswith("IN-SAMPLE"):
                raise InputError(
                    f"--judge {judge}: the offline judge was trained on these responses, so a calibration on them "
                    "would claim it far better than it is; it ships its out-of-sample one (leave-one-model-out)"
                )
        judged = opened.judge([JudgeRequest(request, result.response or "") for request, result in labelled])
    finally:
        opened.close()
    counts = [[0] * len(DECISIONS) for _ in DECISIONS]
    errors = 0
    for (_, reference), judgement in zip(labelled, judged, strict=True):
        if judgement.decision not in DECISIONS or reference.verdict not in DECISIONS:
            errors += 1
            continue
        counts[DECISIONS.index(reference.verdict)][DECISIONS.index(judgement.decision)] += 1
    references = sorted({result.judge for _, result in labelled if result.judge})
    calibration = Calibration(
        tuple(tuple(row) for row in counts),
        judge=opened.name,
        reference=f"the verdicts of {', '.join(references) or 'the recording'} in {recorded.name}",
        responses=f"{len(labelled) - errors} recorded responses in {recorded.name}",
    )
    write_calibration(calibration, out)
    agreed = sum(counts[i][i] for i in range(len(DECISIONS)))
    return [
        f"wrote {out}",
        f"{opened.name} against {calibration.reference}: {agreed} of {calibration.total} labels agree"
        + (f"; {errors} not judged (left out)" if errors else ""),
    ]
