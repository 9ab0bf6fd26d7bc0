import sys
from pathlib import Path

import paddle
import pytest

sys.path.insert(0, str(Path(__file__).parent))
paddle.enable_static()
# The pass reasons in program order. Paddle's parallel scheduler orders ops by the
# values they name, so a program that reads a buffer a loop writes through sharing
# (a while init, an outer buffer) races on its own, with or without the pass.
paddle.set_flags({"FLAGS_new_executor_serial_run": True})


@pytest.fixture
def executor_keeps_loop_inits():
    """Make Paddle's executor run a program that reads a while init after the loop.

    On 3.3.1 its garbage collector frees the init once the while op has read it and
    its inplace pass rewrites the later reader in place, so such programs fail with
    "Tensor holds no memory" whether or not our pass ran. Both are turned off here.
    """
    flags = ["FLAGS_pir_apply_inplace_pass", "FLAGS_eager_delete_tensor_gb"]
    previous = paddle.get_flags(flags)
    paddle.set_flags({"FLAGS_pir_apply_inplace_pass": False, "FLAGS_eager_delete_tensor_gb": -1.0})
    yield
    paddle.set_flags(previous)
