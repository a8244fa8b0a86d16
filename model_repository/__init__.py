"""What Triton loads: the python-backend adapters copied into every built model repository.

Each ``<model>/1/model.py`` here is a thin adapter over :mod:`matteserve.stages`; the build
(:mod:`matteserve.build.repository`) copies them next to rendered ``config.pbtxt`` files.
"""

from pathlib import Path

ADAPTERS = Path(__file__).parent
