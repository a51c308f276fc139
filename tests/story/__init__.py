"""The whole story in one command (``scripts/demo``): build the images, start the one-node
cluster, ``helm install`` the chart, run a prewarmed lazy pod and the same image with a full
pull, print the cold start and the bytes of each and ``kubectl get lazyimages -o wide``, then
tear everything down (also on Ctrl-C or a failure).

Run as root from the repository: ``.venv/bin/python -m tests.story`` (``scripts/demo`` sets up
first). The steps are in story.py, their limits and progress in phases.py, the table in
report.py.
"""
