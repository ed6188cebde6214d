"""Decodes an OTLP ExportProfilesServiceRequest (binary protobuf, the file
named by argv[1]) with the official generated classes of PyPI's
opentelemetry-proto, and prints what it holds as JSON: per resource its
attributes and per sample its count, thread attributes and function names
from the root down. A second decoder for taskprof's OTLP requests,
independent of the Rust crate, used by tests/integration/agent_otlp.rs."""

import json
import sys

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)


def value(any_value):
    kind = any_value.WhichOneof("value")
    return str(getattr(any_value, kind)) if kind else ""


def main(path):
    request = ExportProfilesServiceRequest()
    with open(path, "rb") as f:
        request.ParseFromString(f.read())
    d = request.dictionary
    problems = []
    if not d.string_table or d.string_table[0] != "":
        problems.append("string_table[0] is not empty")
    for name in ["mapping_table", "location_table", "function_table", "link_table", "attribute_table", "stack_table"]:
        table = getattr(d, name)
        if len(table) == 0 or table[0].ByteSize() != 0:
            problems.append(f"{name}[0] is not the zero value")

    def attributes(indices):
        out = {}
        for i in indices:
            a = d.attribute_table[i]
            out[d.string_table[a.key_strindex]] = value(a.value)
        return out

    resources = []
    for rp in request.resource_profiles:
        resource = {
            "attributes": {kv.key: value(kv.value) for kv in rp.resource.attributes},
            "samples": [],
        }
        for sp in rp.scope_profiles:
            for profile in sp.profiles:
                for sample in profile.samples:
                    functions = []
                    for location_index in reversed(d.stack_table[sample.stack_index].location_indices):
                        location = d.location_table[location_index]
                        for line in reversed(location.lines):
                            functions.append(d.string_table[d.function_table[line.function_index].name_strindex])
                    resource["samples"].append(
                        {
                            "count": sample.values[0] if sample.values else 0,
                            "attributes": attributes(sample.attribute_indices),
                            "functions": functions,
                        }
                    )
        resources.append(resource)
    json.dump({"problems": problems, "resources": resources}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
