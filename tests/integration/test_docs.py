"""Every public Lua function has a LuaLS annotation and a line in docs/api/."""
import glob
import os
import re
import unittest

from common import SRC

FUNC = re.compile(r"^function\s+([\w.]+)[.:](\w+)\s*\(", re.M)


def public_functions():
    files = glob.glob(os.path.join(SRC, "meta", "ephrun", "*.lua"))
    files += [f for f in glob.glob(os.path.join(SRC, "stdlib", "ephrun", "*.lua"))
              if not os.path.basename(f).startswith("_")]
    for path in files:
        with open(path) as f:
            text = f.read()
        lines = text.splitlines()
        for m in FUNC.finditer(text):
            owner, name = m.group(1), m.group(2)
            if name.startswith("_") or name.startswith("__"):
                continue
            lineno = text[: m.start()].count("\n")
            yield path, lineno, owner, name, lines


class Docs(unittest.TestCase):
    def test_every_public_function_is_annotated_and_documented(self):
        docs = ""
        for p in glob.glob(os.path.join(SRC, "docs", "api", "*.md")):
            with open(p) as f:
                docs += f.read()
        missing_doc, missing_ann = [], []
        for path, lineno, owner, name, lines in public_functions():
            where = "%s:%d %s.%s" % (os.path.relpath(path, SRC), lineno + 1, owner, name)
            if lineno == 0 or not lines[lineno - 1].startswith("---"):
                missing_ann.append(where)
            if not re.search(r"[.:]%s[({]" % re.escape(name), docs):
                missing_doc.append(where)
        self.assertEqual(missing_ann, [], "functions without a LuaLS annotation")
        self.assertEqual(missing_doc, [], "functions without a line in docs/api/")


if __name__ == "__main__":
    unittest.main(verbosity=2)
