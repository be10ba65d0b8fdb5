"""Validates in-toto statements (one JSON document per line on stdin) with the in-toto
attestation framework's own Python bindings: the Statement v1 wrapper's validate(), every
subject and resolved dependency as a ResourceDescriptor, and the predicate parsed strictly
(unknown fields refused) as a SLSA Provenance v1 message. Prints the number validated."""
import json
import sys

from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2

SLSA = "https://slsa.dev/provenance/v1"
n = 0
for line in sys.stdin:
    if not line.strip():
        continue
    doc = json.loads(line)
    pb = json_format.Parse(line, statement_pb2.Statement())
    Statement.copy_from_pb(pb).validate()
    assert pb.predicate_type == SLSA, pb.predicate_type
    prov = json_format.ParseDict(doc["predicate"], provenance_pb2.Provenance())
    assert prov.build_definition.build_type, "buildType required"
    assert prov.run_details.builder.id, "builder.id required"
    for rd in prov.build_definition.resolved_dependencies:
        ResourceDescriptor.copy_from_pb(rd).validate()
    for rd in prov.run_details.byproducts:
        ResourceDescriptor.copy_from_pb(rd).validate()
    n += 1
if n == 0:
    sys.exit("no statements on stdin")
print(n)
