"""Importing this module registers every handler: what `kopf run -m` expects.

`modelsmith run` imports it too; tests hand it to kopf's KopfRunner.
"""

from modelsmith.runner import register_all

register_all()
