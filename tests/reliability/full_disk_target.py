"""Continue a toy run under a 4 kB file-size limit (like a full disk): `python full_disk_target.py OUT`."""

import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_training_core import train_toy  # noqa: E402

from sdkit.errors import SdkitError  # noqa: E402

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    train_toy(Path(sys.argv[1]), max_steps=6, resume="latest")
except SdkitError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(err.exit_code)
