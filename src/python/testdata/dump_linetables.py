"""Writes the line-table fixtures of src/python/linetable.rs for the running
interpreter: for each code object compiled from SOURCE, its first line, its
raw line table, and the line the interpreter itself gives every instruction
offset (co_lines() on 3.10+, dis.findlinestarts() on 3.8-3.9), -1 for none.

    for py in ~/.pyenv/versions/3.{8..13}*/bin/python3; do
        $py src/python/testdata/dump_linetables.py; done
"""
import dis
import json
import sys

# Loops (backward line deltas), a long line (>255 bytes of bytecode on one
# line), a jump of >127 lines, try/except and with (code without a line on
# 3.10+), nested functions, a comprehension and a generator.
SOURCE = (
    "import os\n"
    "def leaf_hash(data, rounds):\n"
    "    h = 0\n"
    "    for i in range(rounds):\n"
    "        h = (h * 31 + i) % 1000003\n"
    "        while h > 10:\n"
    "            h //= 3\n"
    "    return h\n"
    "def long_line(a):\n"
    "    return " + " + ".join("a" for _ in range(150)) + "\n"
    "def far_apart(a):\n"
    "    b = a + 1\n" + "\n" * 300 + "    return b * 2\n"
    "def handler(path):\n"
    "    try:\n"
    "        with open(path) as f:\n"
    "            return f.read()\n"
    "    except OSError as e:\n"
    "        return str(e)\n"
    "    finally:\n"
    "        path = None\n"
    "def outer(xs):\n"
    "    def inner(x):\n"
    "        return [y * 2 for y in range(x)\n"
    "                if y % 3]\n"
    "    total = sum(\n"
    "        inner(x)[0]\n"
    "        for x in xs\n"
    "    )\n"
    "    return total\n"
)


def code_objects(code):
    yield code
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            yield from code_objects(const)


def lines(code):
    size = len(code.co_code)
    if hasattr(code, "co_lines"):
        expected = [-1] * (size // 2)
        for start, end, line in code.co_lines():
            for offset in range(start, end, 2):
                expected[offset // 2] = -1 if line is None else line
    else:
        starts = dict(dis.findlinestarts(code))
        expected, line = [], code.co_firstlineno
        for offset in range(0, size, 2):
            line = starts.get(offset, line)
            expected.append(line)
    return [(2 * i, line) for i, line in enumerate(expected)]


def main():
    module = compile(SOURCE, "fixture.py", "exec")
    major, minor = sys.version_info[:2]
    for code in code_objects(module):
        table = code.co_linetable if hasattr(code, "co_linetable") else code.co_lnotab
        name = getattr(code, "co_qualname", code.co_name)
        print("    Fixture {")
        print("        version: (%d, %d)," % (major, minor))
        print("        name: %s," % json.dumps(name))
        print("        firstlineno: %d," % code.co_firstlineno)
        print("        table: &[%s]," % ", ".join(str(b) for b in table))
        print("        lines: &[%s]," % ", ".join("(%d, %d)" % p for p in lines(code)))
        print("    },")


main()
