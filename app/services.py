"""What the app opens at startup and closes at shutdown: the store and the broker connection."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.auth import KeyRing, RateLimiter
from app.corpora import CorpusStore
from app.modelstore import ModelStore
from app.settings import Settings
from worker.celery_app import W2VCelery, create_celery
from worker.jobs import JobStore, open_job_store
from worker.storage import StoreLayout

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    layout: StoreLayout
    models: ModelStore
    corpora: CorpusStore
    jobs: JobStore
    celery: W2VCelery
    keys: KeyRing
    rate_limiter: RateLimiter

    def close(self) -> None:
        self.models.close()
        self.jobs.close()
        self.celery.close()


def open_services(settings: Settings) -> Services:
    layout = StoreLayout.at(settings.store)
    layout.ensure()
    if removed := layout.remove_stale_temp_files():
        log.info("removed %d partial uploads or exports left by an API process that was killed", removed)
    return Services(
        settings=settings,
        layout=layout,
        models=ModelStore(layout, settings.model_cache_size),
        corpora=CorpusStore(layout, settings.max_corpus_text_bytes),
        jobs=open_job_store(settings, layout),
        celery=create_celery(settings),
        keys=KeyRing(settings.api_keys),
        rate_limiter=RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
    )
