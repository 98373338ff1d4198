"""The update pipeline (load version → train/consolidate with cl_core → evaluate → commit version) and the
executors that run it: in-process threads (embedded default) or Celery workers (distributed mode)."""
