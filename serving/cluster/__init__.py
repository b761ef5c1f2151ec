"""Cluster mode: the camera side on Ray, the case store in the serving process.

`leases` (fencing numbers, no Ray) is used by case ingest; `coordinator` (in the serving
process) and `worker` (the Ray actor) import Ray inside their functions only, so the base
install, which has no Ray, imports every module of this package.
"""
