"""Celery workers that run training jobs, and the job records they share with the API."""
