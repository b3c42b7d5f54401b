"""The bottom layer of ops: what every launcher, runner and check is built on.

| module | one way to |
|---|---|
| errors | fail: ``OpsError``, the base of every error ops raises |
| commands | run a command to its end: its error names it, shows its stderr's end, no secret |
| processes | keep a server running: one record, one state file, start / wait / stop by pid |
| polling | wait for something, with a deadline that names what was waited for |
| kubectl | talk to a cluster's API server (kubectl and the Argo Rollouts plugin) |
| steps | time and log the steps of a run, and print their table |
| locks | keep two operators out of one state directory |

Nothing here imports anything else of ``pipeline_ops`` (make lint checks it).
"""
