"""``make lint`` counts typing.Any in imd/ (.ci/count_any.py) and fails above
the ceiling recorded in .ci/any-ceiling: the count only goes down.  Pure."""

import importlib.util
import io
import os
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, ".ci", "count_any.py")


def load():
    spec = importlib.util.spec_from_file_location("count_any", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CountAnyTests(unittest.SynchronousTestCase):

    def setUp(self):
        self.count_any = load()

    def test_counts_uses_not_imports(self):
        source = ("import typing\n"
                  "from typing import Any, Dict, Optional\n"
                  "def f(a: Any, b: 'Optional[Any]') -> Dict[str, typing.Any]:\n"
                  "    x: Any = a\n"
                  "    return {'Any': x}\n")
        # a, b (in its string annotation), the return, x; not the import nor the string 'Any' as a key
        self.assertEqual(self.count_any.count_source(source), 4)

    def run_main(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = self.count_any.main(list(argv))
        return status, out.getvalue(), err.getvalue()

    def test_above_the_ceiling_fails(self):
        module = os.path.join(self.mktemp())
        os.makedirs(module)
        with open(os.path.join(module, "m.py"), "w") as f:
            f.write("from typing import Any\nx: Any = 1\ny: Any = 2\n")
        ceiling = self.mktemp()
        with open(ceiling, "w") as f:
            f.write("1\n")
        status, out, err = self.run_main("--ceiling", ceiling, module)
        self.assertEqual((status, out), (1, "Any in imd/: 2 (ceiling 1)\n"))
        self.assertIn("more than the ceiling of 1", err)
        with open(ceiling, "w") as f:
            f.write("2\n")
        self.assertEqual(self.run_main("--ceiling", ceiling, module)[:2], (0, "Any in imd/: 2 (ceiling 2)\n"))

    def test_imd_is_within_its_ceiling(self):
        status, out, err = self.run_main()
        self.assertEqual(status, 0, out + err)
