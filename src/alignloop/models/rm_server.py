"""The reward-model scoring service and its client, so PPO and evaluation can use a remote RM.

``alignloop rm serve MODEL_DIR`` runs :func:`create_app` under uvicorn::

    POST /score   {"prompts": [...], "completions": [...]}  ->  {"scores": [...]}
    GET  /health  {"status": "ok", "kind": ..., "bias": ..., "gain": ...}

Prompts are raw instructions and completions decoded responses (the server formats and
tokenises them exactly as training did). Scores are normalised rewards. Mismatched list lengths
are a 422 with a message naming both lengths. :class:`RemoteScorer` implements the same
``score_batch`` as the local :class:`~alignloop.models.reward.RewardScorer`, so callers switch
between a folder and a URL with :func:`~alignloop.models.reward.load_scorer`.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from alignloop.errors import AlignloopError

MAX_ITEMS = 4096  # completions per request; bigger batches should be split by the client


class ScoreRequest(BaseModel):
    prompts: list[str]
    completions: list[str]


class ScoreResponse(BaseModel):
    scores: list[float]


def create_app(scorer: Any, info: dict[str, Any] | None = None) -> FastAPI:
    """A FastAPI app scoring with ``scorer`` (anything with ``score_batch``). Requests are served
    one at a time: a reward model forward already uses every core, and this bounds memory."""
    app = FastAPI(title="alignloop reward model", version="1")
    lock = threading.Lock()

    @app.post("/score", response_model=ScoreResponse)
    def score(req: ScoreRequest) -> ScoreResponse:
        if len(req.prompts) != len(req.completions):
            raise HTTPException(
                status_code=422,
                detail=f"prompts and completions must have the same length, got {len(req.prompts)} prompts "
                f"and {len(req.completions)} completions",
            )
        if len(req.prompts) > MAX_ITEMS:
            raise HTTPException(
                status_code=422, detail=f"at most {MAX_ITEMS} completions per request, got {len(req.prompts)}"
            )
        if not req.prompts:
            return ScoreResponse(scores=[])
        with lock:
            scores = scorer.score_batch(list(req.prompts), list(req.completions))
        return ScoreResponse(scores=[float(s) for s in scores])

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", **(info or {})}

    return app


def serve(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8100,
    batch_size: int = 16,
    device: str | None = None,
    dtype: str | None = None,
) -> None:
    """Load the reward model in ``model_dir`` and serve it until interrupted. ``device`` (e.g.
    ``cuda:1``) and ``dtype`` (``bf16``) place it apart from the trainer: its own GPU, half the memory."""
    import dataclasses

    import uvicorn

    from alignloop.models.reward import RewardScorer

    scorer = RewardScorer.load(model_dir, batch_size=batch_size, device=device)
    if dtype is not None:
        from alignloop.train.distributed import WEIGHT_DTYPES

        scorer.model.to(WEIGHT_DTYPES[dtype])
    info = {"model_dir": str(model_dir), **dataclasses.asdict(scorer.model.info)}
    print(f"scoring with {model_dir} on http://{host}:{port}/score", flush=True)
    uvicorn.run(create_app(scorer, info), host=host, port=port, log_level="warning")


class RemoteScorer:
    """A :class:`~alignloop.models.scoring.Scorer` that calls an ``alignloop rm serve`` endpoint.

    ``client`` may be any ``httpx.Client`` (tests pass FastAPI's TestClient); large batches are
    sent in requests of at most ``max_items`` completions."""

    def __init__(self, url: str, timeout: float = 120.0, client: Any = None, max_items: int = 1024) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.max_items = max_items
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    def score_batch(self, prompts: list[str], completions: list[str]) -> list[float]:
        import httpx

        if len(prompts) != len(completions):
            raise AlignloopError(f"{len(prompts)} prompts but {len(completions)} completions", "pass one of each")
        out: list[float] = []
        for i in range(0, len(prompts), self.max_items):
            body = {"prompts": prompts[i : i + self.max_items], "completions": completions[i : i + self.max_items]}
            try:
                resp = self._client.post(f"{self.url}/score", json=body)
            except httpx.HTTPError as err:
                raise AlignloopError(
                    f"reward model service at {self.url} is unreachable: {err}",
                    "start it with `alignloop rm serve MODEL_DIR` or check the URL",
                ) from None
            if resp.status_code != 200:
                raise AlignloopError(f"reward model service at {self.url} answered {resp.status_code}: {resp.text}")
            scores = resp.json()["scores"]
            if len(scores) != len(body["prompts"]):
                raise AlignloopError(f"reward model service returned {len(scores)} scores for {len(body['prompts'])}")
            out.extend(float(s) for s in scores)
        return out

    def close(self) -> None:
        self._client.close()
