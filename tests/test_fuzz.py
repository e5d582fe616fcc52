"""Schemathesis against the app's own /openapi.json, with every check it runs by default.

The app runs in-process (ASGI) with its lifespan, API keys on, a model in the store that the
key owns, and the embedded filesystem queue (no worker consumes the jobs it queues). Every
operation gets a bounded number of generated requests, valid and invalid, so CI stays fast.

Two adjustments to the default checks, both because a JSON schema cannot say everything:
- 413 counts as a rejection (negative data) and as an allowed answer (positive data): the body
  caps are byte limits the schema cannot express, and 413 is documented on every operation.
- For the operations listed in `_SEMANTIC_422`, a schema-valid request may still be a 422:
  what they refuse depends on the content (a word2vec file that does not parse, a gzip body
  that does not decompress) or on two fields together (`min_alpha` above `alpha`, both or
  neither of `corpus_id`/`text`, `/similar` with no positive word) or on the model asked (a
  query vector in `/similar/batch` of another length than the model's vectors).
Everything else — no 5xx, documented status codes, response bodies and headers matching the
schema, content types, Allow on 405, unsupported methods — is checked as shipped.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402

from app.auth import key_owner  # noqa: E402
from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from model import Model, save_model  # noqa: E402
from tests.test_api import make_vectors  # noqa: E402
from worker.storage import StoreLayout, new_id  # noqa: E402

pytestmark = pytest.mark.slow

API_KEY = "fuzz-key-0123456789"
# CI runs a fixed, reproducible sample; W2V_FUZZ_EXAMPLES=500 runs a deeper random search locally.
DEEP = int(os.environ.get("W2V_FUZZ_EXAMPLES", "0"))
MAX_EXAMPLES = DEEP or 25

_NEGATIVE_OK = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
_POSITIVE_OK = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
_RAW_BODY = ["/corpora", "/models/import", "/models/{model_id}/evaluate"]
_SEMANTIC_422 = ["/train", "/similar", "/similar/batch", "/models/import", "/models/{model_id}/evaluate", "/corpora"]


def _config() -> SchemathesisConfig:
    checks: dict[str, Any] = {
        "negative_data_rejection": {"expected-statuses": _NEGATIVE_OK},
        "positive_data_acceptance": {"expected-statuses": _POSITIVE_OK},
    }
    return SchemathesisConfig.from_dict(
        {
            "checks": checks,
            "operations": [
                {
                    "include-path": path,
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*_POSITIVE_OK, "422"]}},
                }
                for path in _SEMANTIC_422
            ]
            + [
                # A raw body is bytes: whatever the fuzzer means as a non-string, it arrives as a valid string.
                {"include-path": path, "checks": {"negative_data_rejection": {"enabled": False}}}
                for path in _RAW_BODY
            ],
        }
    )


def _app() -> Any:
    # A store of its own for the whole module. Schemathesis keeps the app's lifespan running
    # until the interpreter exits; atexit runs this removal first, and the app's shutdown
    # writes nothing to the store.
    root = Path(tempfile.mkdtemp(prefix="w2v-fuzz-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    settings_ = Settings(
        store=root / "store",
        broker_url=None,
        api_keys=[API_KEY],
        rate_limit_per_s=0,  # the fuzzer is one very busy client; limits have their own tests
        max_active_jobs_per_key=0,
        max_upload_bytes=200_000,
        max_inline_text_bytes=2_000,
        max_request_bytes=64_000,
    )
    layout = StoreLayout.at(settings_.store)
    layout.ensure()
    model_id = new_id()
    meta = {"model_id": model_id, "created_at": "2025-01-01T00:00:00.000+00:00", "owner": key_owner(API_KEY)}
    save_model(layout.model_dir(model_id), Model(make_vectors(), meta))
    return create_app(settings_)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app(), config=_config(), headers={"X-API-Key": API_KEY})


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=not DEEP, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_contract_holds_for_generated_requests(case: Any) -> None:
    case.call_and_validate(headers={"X-API-Key": API_KEY})
