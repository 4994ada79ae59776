"""Training across processes: JAX's multi-controller runtime on CPU.

Two processes on one machine, two CPU devices each, form one four-device
global mesh (``tests/_multiprocess_worker.py``). They train a small MLP with
``optax.chain(optax.scale_by_adam(), multiscale(...))``, params and every
optimizer state leaf sharded FSDP-style, each process feeding its own slice of
every batch, and checkpoint half-way with Orbax. A second pair of processes
restores the checkpoint and trains the remaining steps.

Why a naive launcher hangs, and what this one does instead:

* Coordinator port. The JAX coordinator is a gRPC server, and gRPC binds with
  ``SO_REUSEPORT``: a second coordinator on a port already in use starts
  without error, and the kernel then splits the clients' connections between
  the two: the jobs' processes mix. (Two two-process jobs started on one
  port on a 2-core CPU: one pair aborted with "tried to connect with a
  different incarnation", the other pair, one process from each job, trained
  together.) "Bind port 0, close, pass the number on" leaves a window in
  which another job can be given the same port. Here the launcher keeps the port
  *reserved* for the whole job: it holds a socket bound to it with
  ``SO_REUSEPORT`` (never listening), which no other socket without that
  option can bind and which port 0 never hands out, while the coordinator,
  also using ``SO_REUSEPORT``, can still bind it.
* Output. A child writing to a ``stdout=PIPE`` that nobody reads blocks once
  the pipe buffer (64 KiB) is full; if the parent meanwhile waits for that
  child, or the child's peer waits for it in a collective, nothing moves.
  Children here write to files.
* A process that fails. Its peer waits in a collective, a barrier or the
  shutdown barrier for the runtime's timeouts (minutes). The launcher polls
  both processes, and as soon as one fails, or the deadline passes, kills
  both process groups; the ``finally`` does so whatever happens, and the
  failure message carries both logs.
* Leaving early. Process 0 hosts the coordinator: if it exits while its
  peer still needs the runtime, the peer waits for timeouts. A worker that
  succeeds ends with ``jax.distributed.shutdown()``, a barrier both reach; a
  worker that fails exits at once (no barrier its blocked peer could never
  reach), and the launcher then kills the peer.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

_WORKER = pathlib.Path(__file__).with_name('_multiprocess_worker.py')
_REPOSITORY = _WORKER.parent.parent
_NUM_PROCESSES = 2
# A job takes 8-15 s on a lightly loaded 2-core CPU; the deadline only bounds
# a failure, it is never waited for when both processes succeed.
_JOB_DEADLINE_SECONDS = 150.0

worker = importlib.import_module('_multiprocess_worker')


def _reserve_port() -> socket.socket:
  """A socket that holds a free port for as long as it stays open.

  Bound with ``SO_REUSEPORT`` and never listening: the coordinator (gRPC,
  also ``SO_REUSEPORT``, same user) can bind the port alongside it, any
  other socket cannot, and port 0 is never resolved to it.
  """
  for family, address in ((socket.AF_INET6, '::'),  # the coordinator's
                          (socket.AF_INET, '0.0.0.0')):  # without IPv6
    reservation = socket.socket(family, socket.SOCK_STREAM)
    try:
      reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
      reservation.bind((address, 0))
    except OSError:
      reservation.close()
      continue
    return reservation
  raise OSError('no port to reserve for the coordinator')


def _kill_group(process: subprocess.Popen) -> None:
  """Kills the process group that ``process`` leads, then reaps it."""
  if process.poll() is None:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(process.pid, signal.SIGKILL)
  process.wait()


def _run_job(phase: str, directory: pathlib.Path,
             processes: list[subprocess.Popen] | None = None) -> None:
  """Runs ``phase`` in two worker processes; fails with their logs if not 0.

  The processes are appended to ``processes`` (if given) as they start.
  """
  environment = dict(os.environ)
  environment['XLA_FLAGS'] = (
      environment.get('XLA_FLAGS', '')
      + ' --xla_force_host_platform_device_count=2')
  environment['JAX_PLATFORMS'] = 'cpu'
  environment['PYTHONPATH'] = os.pathsep.join(
      path for path in (str(_REPOSITORY), environment.get('PYTHONPATH'))
      if path)
  processes = [] if processes is None else processes
  logs = [directory / f'{phase}.{index}.log' for index in range(_NUM_PROCESSES)]
  reservation = _reserve_port()
  try:
    port = reservation.getsockname()[1]
    for index, log in enumerate(logs):
      with open(log, 'wb') as output:
        processes.append(subprocess.Popen(
            [sys.executable, str(_WORKER), phase, f'localhost:{port}',
             str(_NUM_PROCESSES), str(index), str(directory)],
            env=environment, stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + _JOB_DEADLINE_SECONDS
    while True:
      codes = [process.poll() for process in processes]
      if all(code == 0 for code in codes):
        return
      failed = any(code not in (None, 0) for code in codes)
      if failed or time.monotonic() > deadline:
        for process in processes:
          _kill_group(process)
        reason = (f'exit codes {codes}' if failed
                  else f'still running after {_JOB_DEADLINE_SECONDS} s')
        pytest.fail(f'{phase}: {reason}\n' + '\n'.join(
            f'--- process {index} log:\n'
            + log.read_text(errors='replace')[-4000:]
            for index, log in enumerate(logs)))
      time.sleep(0.1)
  finally:
    for process in processes:
      _kill_group(process)
    reservation.close()


def _single_process_run() -> tuple[dict[str, np.ndarray], float]:
  r"""The same steps on one device, unsharded, with the whole batches.

  Returns the final params and state, keyed like the workers' output, and
  the smallest :math:`\sqrt{\hat v}` (Adam's denominator) over all steps.
  """
  optimizer = worker.make_optimizer()
  params = jax.tree.map(jax.numpy.asarray, worker.init_params())
  opt_state = optimizer.init(params)
  train_step = jax.jit(worker.make_train_step(optimizer))
  inputs, targets = worker.global_batches()
  smallest_denominator = np.inf
  for step in range(worker.TOTAL_STEPS):
    params, opt_state = train_step(
        params, opt_state, inputs[step], targets[step])
    # optax.scale_by_adam's default b2 = 0.999 and bias correction.
    bias_correction = 1.0 - 0.999 ** (step + 1)
    for nu in jax.tree.leaves(opt_state[0].nu):
      smallest_denominator = min(
          smallest_denominator, float(np.sqrt(np.min(nu) / bias_correction)))
  leaves = jax.tree_util.tree_flatten_with_path(
      {'params': params, 'opt_state': opt_state})[0]
  return ({jax.tree_util.keystr(path): np.asarray(leaf)
           for path, leaf in leaves}, smallest_denominator)


@pytest.mark.multiprocess
def test_two_processes_match_one_and_resume_bit_exactly(tmp_path):
  _run_job('train', tmp_path)
  _run_job('resume', tmp_path)
  trained = dict(np.load(tmp_path / 'train.npz'))
  resumed = dict(np.load(tmp_path / 'resume.npz'))
  with jax.enable_x64(True):
    reference, smallest_denominator = _single_process_run()

  assert sorted(trained) == sorted(reference)
  assert sum('subweights' in name for name in trained) == 8
  # Same program, same shardings, same inputs from the checkpoint: the
  # resumed run must repeat the uninterrupted one bit for bit.
  for name, value in trained.items():
    np.testing.assert_array_equal(resumed[name], value, err_msg=name)

  # Against one process, the reductions (the batch mean, the matmuls' sums)
  # run in another order. A sum of n <= 24 float64 terms then differs by at
  # most n * u * sum|terms| (Higham, Accuracy and Stability, §4.2), u =
  # 1.1e-16; with inputs, weights and residuals O(1), sum|terms| <= 10, so a
  # gradient entry differs by dg <= 24 * 1.1e-16 * 10 = 2.7e-14. Adam's
  # direction m_hat / (sqrt(v_hat) + eps) then differs by at most
  # 2 dg / sqrt(v_hat) <= 2 * 2.7e-14 / 1e-4 = 5.4e-10 while
  # sqrt(v_hat) >= 1e-4 (asserted below: it is a property of this problem,
  # not of the device). The multiscale learner is linear with rates summing
  # to 0.017, so each step moves params and subweights apart by
  # <= 0.017 * 5.4e-10 = 9.2e-12, and 6 steps by 5.5e-11 plus the feedback
  # through the gradient (Hessian O(1) times 0.017 per step: a factor
  # 1.017^6 = 1.1). Moments differ by less (dg-sized). 1e-9 bounds all.
  assert smallest_denominator >= 1e-4, smallest_denominator
  for name, value in reference.items():
    if value.dtype.kind in 'iu':
      np.testing.assert_array_equal(trained[name], value, err_msg=name)
    else:
      assert value.dtype == np.float64, name
      np.testing.assert_allclose(
          trained[name], value, rtol=0, atol=1e-9, err_msg=name)
  assert trained["['opt_state'][1].count"] == worker.TOTAL_STEPS


@pytest.mark.multiprocess
def test_a_failing_process_ends_the_job_at_once(tmp_path):
  # Process 1 raises right after joining; process 0 goes on into training and
  # would wait for it in the first collective.
  processes: list[subprocess.Popen] = []
  start = time.monotonic()
  with pytest.raises(pytest.fail.Exception, match='injected failure'):
    _run_job('crash', tmp_path, processes)
  assert time.monotonic() - start < _JOB_DEADLINE_SECONDS / 2
  assert len(processes) == _NUM_PROCESSES
  for process in processes:
    assert process.returncode is not None
    with pytest.raises(ProcessLookupError):
      os.killpg(process.pid, 0)


def _python_blocks(markdown: str) -> list[str]:
  return re.findall(r'```python\n(.*?)```', markdown, flags=re.DOTALL)


def test_scaling_out_page_shows_the_tested_code():
  page = (_REPOSITORY / 'docs' / 'scaling_out.md').read_text()
  source = _WORKER.read_text()
  blocks = _python_blocks(page)
  assert len(blocks) >= 4
  for block in blocks:
    lines = [line.strip() for line in block.strip().splitlines()
             if line.strip() and not line.strip().startswith('#')]
    source_lines = [line.strip() for line in source.splitlines()]
    # Every code line of the page is a line of the tested worker, in order.
    position = 0
    for line in lines:
      assert line in source_lines[position:], line
      position = source_lines.index(line, position) + 1
