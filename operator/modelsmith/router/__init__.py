"""The built-in router: weighted traffic split, header pinning and shadowing, no mesh.

It runs from the operator image (`modelsmith router`) in front of an InferenceService's
revisions, reads the route table the operator publishes (`modelsmith.routes`) and
exports the per-revision metrics the canary analysis queries. It imports neither kopf
nor the operator's handlers, so it starts in a fraction of a second.
"""
