"""imd.resources: sql/, web/ and the SDK's built modules found in a
checkout and in an installed package (the installed case end to end:
tests/test_packaging.py)."""

import importlib.resources
import os
import pathlib

from twisted.trial import unittest

import imd
from imd import resources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DataDirTests(unittest.SynchronousTestCase):

    def test_checkout_directories(self):
        self.assertEqual(resources.data_dir("sql"), os.path.join(ROOT, "sql"))
        self.assertEqual(resources.data_dir("web"), os.path.join(ROOT, "web"))
        self.assertIn("001_message.sql", os.listdir(resources.data_dir("sql")))
        self.assertIn("page.html", os.listdir(resources.data_dir("web")))

    def test_installed_copy_comes_first(self):
        package = pathlib.Path(self.mktemp()).absolute()
        (package / "web").mkdir(parents=True)
        self.patch(importlib.resources, "files", lambda anchor: package)
        self.assertEqual(resources.data_dir("web"), str(package / "web"))

    def test_unknown_name(self):
        self.assertRaises(ValueError, resources.data_dir, "etc")

    def test_sdk_in_a_checkout_is_clients_js_dist_once_built(self):
        checkout = pathlib.Path(self.mktemp()).absolute()
        (checkout / "imd").mkdir(parents=True)
        self.patch(imd, "__file__", str(checkout / "imd" / "__init__.py"))
        self.patch(importlib.resources, "files", lambda anchor: checkout / "imd")
        with self.assertRaises(FileNotFoundError) as caught:
            resources.data_dir("sdk")
        self.assertIn(os.path.join("clients", "js", "dist"), str(caught.exception))
        (checkout / "clients" / "js" / "dist").mkdir(parents=True)
        self.assertEqual(resources.data_dir("sdk"), str(checkout / "clients" / "js" / "dist"))
        (checkout / "imd" / "sdk").mkdir()   # an installed copy comes first
        self.assertEqual(resources.data_dir("sdk"), str(checkout / "imd" / "sdk"))
