"""Every public Lua function has a LuaLS annotation and a line in docs/api/, and the provider
contract in docs/providers.md says what meta/ephrun/provider.lua declares."""
import glob
import os
import re
import unittest

from common import SRC

FUNC = re.compile(r"^function\s+([\w.]+)[.:](\w+)\s*\(", re.M)


CONTRACT_META = os.path.join(SRC, "meta", "ephrun", "provider.lua")
CONTRACT_DOC = os.path.join(SRC, "docs", "providers.md")


def public_functions():
    # The provider contract is documented in docs/providers.md (checked below), not docs/api/.
    files = [f for f in glob.glob(os.path.join(SRC, "meta", "ephrun", "*.lua")) if f != CONTRACT_META]
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


def contract_meta():
    """{name: (signature, optional)} of ephrun.Provider's functions, and its field names."""
    with open(CONTRACT_META) as f:
        text = f.read()
    fns = {}
    for m in re.finditer(r"((?:^---.*\n)+)^function Provider\.(\w+)\(([^)]*)\) end$", text, re.M):
        comment, name, args = m.group(1), m.group(2), m.group(3)
        fns[name] = ("%s(%s)" % (name, args), "--- Optional." in comment)
    cls = re.search(r"^---@class ephrun\.Provider\n((?:---@field .*\n)+)", text, re.M)
    fields = re.findall(r"^---@field (\w+)", cls.group(1), re.M) if cls else []
    return fns, fields


def contract_doc():
    """The rows of the function and field tables in docs/providers.md's "The contract" section
    (the instance's fields follow them)."""
    with open(CONTRACT_DOC) as f:
        text = f.read()
    section = re.search(r"^## The contract\n(.*?)(?=^An \*\*instance\*\*|^## )", text, re.M | re.S).group(1)
    fns, fields = {}, []
    for row in re.findall(r"^\| `([^`]+)`(.*)$", section, re.M):
        cell, rest = row
        m = re.match(r"^(\w+)\((.*)\)$", cell)
        if m:
            fns[m.group(1)] = (cell, rest.lstrip().startswith("*(optional)*"))
        elif re.match(r"^\w+$", cell):
            fields.append(cell)
    return fns, fields


class ProviderContractDoc(unittest.TestCase):
    def test_doc_and_meta_list_the_same_functions_with_the_same_signatures(self):
        meta, _ = contract_meta()
        doc, _ = contract_doc()
        self.assertGreater(len(meta), 10, "meta/ephrun/provider.lua: no functions found")
        self.assertEqual(sorted(set(doc) - set(meta)), [], "documented in docs/providers.md, not in the meta class")
        self.assertEqual(sorted(set(meta) - set(doc)), [], "in the meta class, not documented in docs/providers.md")
        for name in sorted(meta):
            self.assertEqual(doc[name][0], meta[name][0], "signature of %s differs" % name)
            self.assertEqual(doc[name][1], meta[name][1],
                             "%s: '*(optional)*' in the doc and '--- Optional.' in the meta must agree" % name)

    def test_doc_and_meta_list_the_same_fields(self):
        _, meta = contract_meta()
        _, doc = contract_doc()
        self.assertIn("ttl_effect", meta)
        self.assertEqual(sorted(doc), sorted(meta))


if __name__ == "__main__":
    unittest.main(verbosity=2)
