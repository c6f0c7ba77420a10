"""The systemd units under etc/systemd/: hardened, restartable, and clean
under ``systemd-analyze verify`` where systemd is installed."""

import configparser
import glob
import os
import shutil
import subprocess
import sys

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = os.path.join(ROOT, "etc", "systemd")
SERVICES = ("imd-ws@.service", "imd-http.service", "imd-migrate.service", "imd-ws-activated@.service")
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
             "PrivateDevices": "yes", "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes"}


def read_unit(name):
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read(os.path.join(UNITS, name))
    return parser


class UnitContentTests(unittest.SynchronousTestCase):

    def test_services_are_hardened_and_restart_on_failure(self):
        for name in SERVICES:
            service = read_unit(name)["Service"]
            for key, value in HARDENING.items():
                self.assertEqual(service.get(key), value, "%s: %s" % (name, key))
            self.assertEqual(service["Restart"], "on-failure", name)
            self.assertGreaterEqual(int(service["LimitNOFILE"]), 65536, name)
            self.assertEqual(service["User"], "imd", name)
            self.assertIn("twistd --nodaemon --pidfile= imd --config /etc/imd/imd.ini", service["ExecStart"], name)
            self.assertGreater(int(service["TimeoutStopSec"]), 10, "%s: above the default shutdown_grace" % name)

    def test_the_migrator_yields_the_cpu_to_the_nodes(self):
        self.assertGreater(int(read_unit("imd-migrate.service")["Service"]["Nice"]), 0)
        self.assertNotIn("Nice", read_unit("imd-ws@.service")["Service"])

    def test_each_role_runs_only_itself(self):
        for name, role in (("imd-ws@.service", "ws"), ("imd-http.service", "http"),
                           ("imd-migrate.service", "migrate"), ("imd-ws-activated@.service", "ws")):
            self.assertIn("--roles %s " % role, read_unit(name)["Service"]["ExecStart"] + " ")

    def test_pypy_variant_in_a_comment_is_the_same_command_from_the_pypy_venv(self):
        for name in ("imd-ws@.service", "imd-ws-activated@.service", "imd-migrate.service"):
            with open(os.path.join(UNITS, name)) as f:
                commented = [line[2:].strip() for line in f if line.startswith("# ExecStart=")]
            expected = "ExecStart=" + read_unit(name)["Service"]["ExecStart"].replace(
                "/opt/imd/.venv/", "/opt/imd/.venv-pypy3/")
            self.assertEqual(commented, [expected], name)

    def test_command_lines_are_accepted_by_twistd_imd(self):
        from imd.tap import Options
        for name in SERVICES:
            argv = read_unit(name)["Service"]["ExecStart"].replace("%i", "8765").replace("%H", "host").split()
            args = argv[argv.index("imd") + 1:]
            # everything but loading the (absent) /etc/imd/imd.ini
            options = Options()
            options.postOptions = lambda: None
            options.parseOptions(args)
            self.assertEqual(options["config"], "/etc/imd/imd.ini")


class SystemdAnalyzeTests(unittest.TestCase):

    def setUp(self):
        if shutil.which("systemd-analyze") is None:
            raise unittest.SkipTest("systemd-analyze is not installed here (no systemd)")

    def test_verify_passes_without_warnings(self):
        # The units name /opt/imd; point them at this checkout so the
        # executables they start exist (those of the venv running the
        # tests: a checkout may have only .venv-pypy3), and give the
        # templates an instance.
        venv_bin = os.path.dirname(os.path.abspath(sys.executable))
        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        names = []
        for path in glob.glob(os.path.join(UNITS, "*")):
            with open(path) as f:
                text = f.read().replace("/opt/imd/.venv/bin", venv_bin).replace("/opt/imd", ROOT)
            name = os.path.basename(path).replace("@.", "@8765.")
            with open(os.path.join(where, name), "w") as f:
                f.write(text)
            names.append(name)
        result = subprocess.run(["systemd-analyze", "verify", "--man=no"] + sorted(names), cwd=where,
                                capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))
