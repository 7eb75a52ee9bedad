"""Worker processes: one serve loop (``serve``) and a binding per kind of worker --
``cpu_worker`` (the coordinator's shared memory), ``gpu_worker`` (a CUDA device). The
coordinator starts them as ``python -m dpnet.workers.<kind>_worker -``."""
