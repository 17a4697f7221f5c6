r"""Fault injection: kill, corrupt, fill, race and mislead real runs.

  python benchmarks/fault_injection.py            # every fault, ~15 min
  python benchmarks/fault_injection.py --quick    # one trial of each
  python benchmarks/fault_injection.py --json=faults.json

Every trial runs `experiments/sinusoid.py` (or, for malformed data, the
student and few-shot experiments) as a user would, in a subprocess, and
injects one fault:

  kill        SIGKILL at a random moment of the run
  kill-save   SIGKILL while a checkpoint is being written
  corrupt-*   a flipped byte, a truncated or deleted file, a missing
              manifest or an empty folder in the newest checkpoint of a
              killed run; all checkpoints corrupt
  log-*       a torn last line or a garbage line in metrics.jsonl
  disk-full   the workdir's filesystem (a small tmpfs) filled during the run
  concurrent  two runs started at once on one workdir
  flags-*     a finished run rerun with another seed, or fewer steps
  diverge     an outer learning rate of 3
  data-*      malformed knowledge-tracing files and npz archives

After the fault the same command is run again. A trial *survives* when that
rerun ends with exactly the results of an uninterrupted reference run and
resumed no earlier than the newest checkpoint that existed at the fault, or,
for faults that must be refused, when the run stops with a message naming
the file, flag or step at fault and leaves the workdir's checkpoints and
results as they were. Anything else is *lost*.
"""

import argparse
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
SINUSOID = os.path.join(ROOT, "experiments", "sinusoid.py")
RUN = ["--num_steps=20000", "--log_every=100", "--checkpoint_every=500",
       "--eval_tasks=100", "--eval_steps=0,1,5", "--meta_batch_size=10",
       "--progress=true"]
LEARNERS = {"maml": "meta", "joint": "joint"}


def sinusoid(workdir, cache, *extra):
  return [sys.executable, SINUSOID, f"--workdir={workdir}",
          f"--compilation_cache={cache}", *RUN, *extra]


def run(cmd, timeout=900):
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                        check=False)


def checkpoint_steps(workdir):
  """{learner folder: newest complete checkpoint step} in a sinusoid workdir."""
  out = {}
  for folder in LEARNERS.values():
    d = os.path.join(workdir, folder, "checkpoints")
    steps = [int(n) for n in os.listdir(d) if n.isdigit()] if (
        os.path.isdir(d)) else []
    out[folder] = max(steps, default=0)
  return out


def resumed_steps(stderr):
  """{learner folder: step it resumed from} as the rerun reported it."""
  out = {folder: 0 for folder in LEARNERS.values()}
  for name, step in re.findall(r"(maml|joint): resumed from step (\d+)",
                               stderr):
    out[LEARNERS[name]] = int(step)
  return out


def results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    r = json.load(f)
  return {"mse": r["mse"], "mse_curve": r["mse_curve"]}


def digest(workdir):
  """SHA-256 of every checkpoint file and results.json in `workdir`.

  A `tmp-*` folder is a save that a kill interrupted: never a checkpoint,
  never restored, and removed by the next run that opens the folder, so it
  is not counted.
  """
  h = {}
  for path in sorted(glob.glob(os.path.join(workdir, "**"), recursive=True)):
    rel = os.path.relpath(path, workdir)
    if os.path.isfile(path) and (
        ("checkpoints" in path and f"{os.sep}tmp-" not in rel) or
        path.endswith("results.json")):
      with open(path, "rb") as f:
        h[rel] = hashlib.sha256(
            f.read()).hexdigest()
  return h


class Trials:
  """Runs the trials and keeps their verdicts."""

  def __init__(self, base, cache, reference, ref_seconds, rng):
    self.base, self.cache = base, cache
    self.reference, self.ref_seconds = reference, ref_seconds
    self.rng = rng
    self.rows = []
    self.count = 0

  def workdir(self):
    self.count += 1
    return os.path.join(self.base, f"trial{self.count:03d}")

  def record(self, fault, survived, detail):
    self.rows.append({"fault": fault, "survived": bool(survived),
                      "lost": not survived, "detail": detail})
    print(f"  {fault:<22} {'survived' if survived else 'LOST':<9} {detail}",
          flush=True)

  def finish(self, fault, workdir, before, note=""):
    """Reruns to the end; survived if exact and resumed from >= `before`."""
    proc = run(sinusoid(workdir, self.cache))
    if proc.returncode != 0:
      self.record(fault, False, f"rerun failed: {proc.stderr[-300:]!r}")
      return
    resumed = resumed_steps(proc.stdout + proc.stderr)
    behind = {k: (resumed[k], v) for k, v in before.items() if resumed[k] < v}
    same = results(workdir) == self.reference
    detail = (f"{note}resumed meta@{resumed['meta']} joint@"
              f"{resumed['joint']} (newest before: {before['meta']}, "
              f"{before['joint']}); results {'equal' if same else 'DIFFER'}")
    self.record(fault, same and not behind, detail)

  def killed_run(self, fraction=None):
    """A workdir whose run was SIGKILLed part-way; returns it and its steps."""
    workdir = self.workdir()
    proc = subprocess.Popen(sinusoid(workdir, self.cache),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    fraction = self.rng.uniform(0.1, 0.9) if fraction is None else fraction
    time.sleep(fraction * self.ref_seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return workdir, checkpoint_steps(workdir), fraction

  # --- the faults ---------------------------------------------------------

  def kill(self):
    workdir, before, fraction = self.killed_run()
    self.finish("kill", workdir, before,
                f"killed at {fraction:.0%} of the run; ")

  def kill_during_save(self):
    workdir = self.workdir()
    proc = subprocess.Popen(sinusoid(workdir, self.cache),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Skip a random number of saves, then kill inside the next one.
    skip = self.rng.randint(1, 30)
    seen, caught = set(), None
    deadline = time.time() + 3 * self.ref_seconds
    while proc.poll() is None and time.time() < deadline:
      tmp = glob.glob(os.path.join(workdir, "*", "checkpoints", "tmp-[0-9]*"))
      for t in tmp:
        seen.add(t)
      if tmp and len(seen) > skip:
        proc.send_signal(signal.SIGKILL)
        caught = tmp[0]
        break
      time.sleep(0.0005)
    proc.wait()
    before = checkpoint_steps(workdir)
    if caught is None:
      self.record("kill-save", False, "never caught a save in progress")
      return
    self.finish("kill-save", workdir, before,
                f"killed while writing {os.path.relpath(caught, workdir)}; ")

  def corrupt(self, how):
    # A busy machine can be slower than the reference: kill later until the
    # run has the checkpoints to corrupt (the fault was not injected before).
    for fraction in (0.35, 0.5, 0.65, 0.8, 0.95):
      workdir, before, _ = self.killed_run(fraction)
      folder = "meta" if before["joint"] == 0 else "joint"
      ckpt_dir = os.path.join(workdir, folder, "checkpoints")
      steps = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()
                     ) if os.path.isdir(ckpt_dir) else []
      if len(steps) >= (1 if how == "all" else 2):
        break
    else:
      self.record(f"corrupt-{how}", False, f"never killed late enough to "
                  f"find checkpoints: {steps}")
      return
    victims = steps if how == "all" else steps[-1:]
    for step in victims:
      target = os.path.join(ckpt_dir, str(step))
      files = [p for p in glob.glob(os.path.join(target, "**"),
                                    recursive=True)
               if os.path.isfile(p) and not p.endswith("manifest.json")]
      if not files:
        continue
      victim = self.rng.choice(files)
      if how in ("flip", "all"):
        with open(victim, "r+b") as f:
          data = bytearray(f.read())
          if not data:
            data = bytearray(b"\0")
          data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
          f.seek(0)
          f.write(data)
      elif how == "truncate":
        with open(victim, "r+b") as f:
          f.truncate(os.path.getsize(victim) // 2)
      elif how == "delete-file":
        os.remove(victim)
      elif how == "no-manifest":
        os.remove(os.path.join(target, "metajax_manifest.json"))
      elif how == "empty-folder":
        shutil.rmtree(target)
        os.makedirs(target)
    if how == "all":
      snapshot = digest(workdir)
      proc = run(sinusoid(workdir, self.cache))
      named = all(os.path.join(ckpt_dir, str(s)) in proc.stderr
                  for s in victims)
      after = digest(workdir)
      changed = sorted(p for p in set(snapshot) | set(after)
                       if snapshot.get(p) != after.get(p))
      self.record("corrupt-all", proc.returncode != 0 and named and not changed,
                  f"refused naming all {len(victims)} checkpoints: {named}; "
                  f"left in place: {not changed}"
                  + (f" (changed: {changed})" if changed else ""))
      return
    # The corrupted one is the newest: resuming from the one before is right.
    before[folder] = steps[-2]
    self.finish(f"corrupt-{how}", workdir, before,
                f"{folder}/checkpoints/{steps[-1]}; ")

  def log_fault(self, how):
    # Kill later until the run has logged (see `corrupt`).
    for fraction in (0.3, 0.5, 0.7, 0.9):
      workdir, before, _ = self.killed_run(fraction)
      log = os.path.join(workdir, "meta", "metrics.jsonl")
      if os.path.exists(log) and os.path.getsize(log):
        break
    else:
      self.record(f"log-{how}", False, "never killed late enough to find "
                  "a log")
      return
    with open(log) as f:
      lines = f.readlines()
    if how == "torn":
      with open(log, "a") as f:
        f.write('{"step": 99999, "loss": 0.12')
      self.finish("log-torn", workdir, before, "torn last line; ")
      return
    with open(log, "w") as f:
      f.writelines(lines[:1] + ["\x00garbage\n"] + lines[1:])
    snapshot = digest(workdir)
    proc = run(sinusoid(workdir, self.cache))
    named = "metrics.jsonl, line 2" in proc.stderr
    self.record("log-garbage", proc.returncode != 0 and named and
                digest(workdir) == snapshot,
                f"refused naming metrics.jsonl, line 2: {named}")

  def disk_full(self):
    mount = tempfile.mkdtemp(prefix="fault_tmpfs_")
    try:
      subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs",
                      mount], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
      self.record("disk-full", True, f"skipped: cannot mount a tmpfs ({e})")
      os.rmdir(mount)
      return
    try:
      workdir = os.path.join(mount, "run")
      proc = subprocess.Popen(sinusoid(workdir, self.cache),
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
      time.sleep(self.rng.uniform(0.2, 0.7) * self.ref_seconds)
      filler = os.path.join(mount, "filler")
      with open(filler, "wb") as f:
        try:
          while True:
            f.write(b"\0" * (1 << 16))
            f.flush()
        except OSError:
          pass
      _, err = proc.communicate(timeout=600)
      failed = proc.returncode != 0
      before = checkpoint_steps(workdir)
      os.remove(filler)
      note = (f"run {'stopped: ' + err.strip().splitlines()[-1][:80] if failed else 'finished anyway'}; ")
      self.finish("disk-full", workdir, before, note)
    finally:
      subprocess.run(["umount", "-l", mount], check=False)
      shutil.rmtree(mount, ignore_errors=True)

  def concurrent(self):
    workdir = self.workdir()
    procs = [subprocess.Popen(sinusoid(workdir, self.cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    codes = sorted(p.returncode for p in procs)
    refused = [e for (_, e), p in zip(outs, procs) if p.returncode != 0]
    named = bool(refused) and "in use by another run (PID" in refused[0]
    same = os.path.exists(os.path.join(workdir, "results.json")) and (
        results(workdir) == self.reference)
    self.record("concurrent", codes == [0, 1] and named and same,
                f"exit codes {codes}; second refused naming the PID: "
                f"{named}; results equal: {same}")

  def changed_flags(self, finished, flag, expect):
    workdir = self.workdir()
    shutil.copytree(finished, workdir)
    snapshot = digest(workdir)
    proc = run(sinusoid(workdir, self.cache, flag))
    named = expect in proc.stderr
    self.record(f"flags {flag}", proc.returncode != 0 and named and
                digest(workdir) == snapshot,
                f"refused with {expect!r}: {named}; workdir unchanged: "
                f"{digest(workdir) == snapshot}")

  def diverge(self):
    # pylint: disable=g-import-not-at-top
    import jax
    import optax
    import metajax
    from metajax.experiments import sinusoid as sinusoid_lib
    workdir = self.workdir()
    proc = run(sinusoid(workdir, self.cache, "--outer_lr=3"))
    match = re.search(r"FloatingPointError: maml: non-finite values at step "
                      r"(\d+)", proc.stderr)
    config = sinusoid_lib.Config(outer_lr=3.0)
    like = metajax.init_state(
        sinusoid_lib.make_learner(config, config.inner_steps),
        optax.adam(config.outer_lr), jax.random.PRNGKey(0))
    try:
      state = metajax.restore_state(os.path.join(workdir, "meta"), like)
      finite = not metajax.checkpoint.nonfinite_leaves(state)
    except Exception as e:  # pylint: disable=broad-except
      finite = f"unreadable: {e}"
    self.record("diverge", bool(match) and finite is True and not
                os.path.exists(os.path.join(workdir, "results.json")),
                f"stopped at step {match.group(1) if match else '?'} naming "
                f"the learner; checkpoint finite: {finite}")

  def bad_data(self, how):
    base = tempfile.mkdtemp(prefix="fault_data_", dir=self.base)
    workdir = os.path.join(base, "run")
    if how.startswith("kt"):
      folder = os.path.join(base, "bad")
      os.makedirs(folder)
      good = b"3\n1,2,3\n0,1,1\n2\n4,5\n1,0\n"
      bad = {"kt-token": b"3\n1,--1,3\n0,1,1\n",
             "kt-digits": "3\n1,\u0663,3\n0,1,1\n".encode(),
             "kt-bytes": b"3\n1,2,3\n0,1,\xff\n",
             "kt-truncated": b"3\n1,2,3\n"}[how]
      with open(os.path.join(folder, "bad_train.csv"), "wb") as f:
        f.write(good + bad)
      with open(os.path.join(folder, "bad_test.csv"), "wb") as f:
        f.write(good)
      cmd = [sys.executable, os.path.join(ROOT, "experiments",
                                          "student_performance.py"),
             "--dataset=bad", f"--data_dir={base}", "--fold=0",
             f"--workdir={workdir}", f"--compilation_cache={self.cache}",
             "--progress=false"]
      expect = "bad_train.csv"
    else:
      src = os.path.join(SHARED, "omniglot")
      data = os.path.join(base, "omniglot")
      os.makedirs(data)
      for name in os.listdir(src):
        if name.endswith(".npz") or name == "vinyals_splits":
          (shutil.copytree if os.path.isdir(os.path.join(src, name))
           else shutil.copy)(os.path.join(src, name),
                             os.path.join(data, name))
      victim = os.path.join(data, "omniglot_background_105.npz")
      with open(victim, "r+b") as f:
        if how == "npz-truncated":
          f.truncate(os.path.getsize(victim) // 3)
        else:
          f.seek(os.path.getsize(victim) // 2)
          byte = f.read(1)
          f.seek(-1, 1)
          f.write(bytes([byte[0] ^ 0x10]))
      cmd = [sys.executable, os.path.join(ROOT, "experiments",
                                          "fewshot_vision.py"),
             f"--data_dir={base}", "--cache_dir=off", f"--workdir={workdir}",
             f"--compilation_cache={self.cache}", "--progress=false"]
      expect = "omniglot_background_105.npz"
    proc = run(cmd)
    message = (proc.stderr.strip().splitlines() or [""])[-1]
    trained = os.path.exists(os.path.join(workdir, "checkpoints")) or (
        os.path.exists(os.path.join(workdir, "joint")))
    self.record(how, proc.returncode != 0 and expect in message and
                not trained, f"{message[:110]}")
    shutil.rmtree(base, ignore_errors=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="one trial of each fault")
  parser.add_argument("--kills", type=int, default=6,
                      help="random-moment kills")
  parser.add_argument("--save_kills", type=int, default=3,
                      help="kills during a checkpoint write")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default="", help="write the trials here")
  parser.add_argument("--keep", action="store_true",
                      help="keep the trial workdirs")
  parser.add_argument("--only", default="",
                      help="comma-separated faults to try (e.g. corrupt-all,"
                           "disk-full); default: all")
  args = parser.parse_args()
  if args.quick:
    args.kills = args.save_kills = 1
  start = time.perf_counter()
  base = tempfile.mkdtemp(prefix="metajax_faults_")
  cache = os.path.join(base, "xla_cache")
  rng = random.Random(args.seed)

  print("reference: an uninterrupted run", flush=True)
  reference_dir = os.path.join(base, "reference")
  t0 = time.perf_counter()
  proc = run(sinusoid(reference_dir, cache))
  if proc.returncode != 0:
    sys.exit(f"the reference run failed:\n{proc.stderr[-3000:]}")
  run(sinusoid(os.path.join(base, "warm"), cache))  # cache filled: time it
  t1 = time.perf_counter()
  run(sinusoid(os.path.join(base, "timed"), cache))
  ref_seconds = time.perf_counter() - t1
  print(f"  reference run: {t1 - t0:.0f} s for two, {ref_seconds:.0f} s warm",
        flush=True)
  trials = Trials(base, cache, results(reference_dir), ref_seconds, rng)

  plan = [("kill", trials.kill, ())] * args.kills
  plan += [("kill-save", trials.kill_during_save, ())] * args.save_kills
  plan += [(f"corrupt-{how}", trials.corrupt, (how,)) for how in (
      "flip", "truncate", "delete-file", "no-manifest", "empty-folder",
      "all")]
  plan += [(f"log-{how}", trials.log_fault, (how,))
           for how in ("torn", "garbage")]
  plan += [("disk-full", trials.disk_full, ()),
           ("concurrent", trials.concurrent, ())]
  plan += [("flags", trials.changed_flags, (reference_dir, flag, expect))
           for flag, expect in (
               ("--seed=1", "--seed: 0 in the workdir, 1 now"),
               ("--hidden=40,41",
                "--hidden: [40, 40] in the workdir, [40, 41] now"),
               ("--num_steps=10000", "past --num_steps=10000"))]
  plan += [("diverge", trials.diverge, ())]
  plan += [(how, trials.bad_data, (how,)) for how in (
      "kt-token", "kt-digits", "kt-bytes", "kt-truncated")]
  if os.path.isdir(SHARED):
    plan += [(how, trials.bad_data, (how,))
             for how in ("npz-truncated", "npz-flipped")]
  only = set(filter(None, args.only.split(",")))
  for name, trial, trial_args in plan:
    if not only or name in only:
      trial(*trial_args)

  rows = trials.rows
  survived = sum(r["survived"] for r in rows)
  lost = sum(r["lost"] for r in rows)
  by_fault = {}
  for r in rows:
    name = r["fault"].split(" ")[0]
    counts = by_fault.setdefault(name, [0, 0, 0])
    counts[0] += 1
    counts[1] += r["survived"]
    counts[2] += r["lost"]
  print("\n| fault | trials | survived | lost |\n| --- | --- | --- | --- |")
  for name, (n, s, l) in by_fault.items():
    print(f"| {name} | {n} | {s} | {l} |")
  wall = time.perf_counter() - start
  print(f"\nfaults tried: {len(rows)}, survived: {survived}, lost: {lost} "
        f"({wall:.0f} s)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"trials": rows, "survived": survived, "lost": lost,
                 "wall_s": wall}, f, indent=1)
  if not args.keep:
    shutil.rmtree(base, ignore_errors=True)
  sys.exit(1 if lost else 0)


if __name__ == "__main__":
  main()
