"""Tests of the traffic count of ``benchmarks/update_traffic.py``."""

import numpy as np
import optax
import pytest

import multiscale_optax as mso
from benchmarks import update_traffic


def test_adam_moves_its_seven_arrays_and_three_more():
  # Adam reads params, grads, mu, nu and writes params, mu, nu (7 at
  # least); XLA:CPU reads the grads again in each of the three loops.
  counted = update_traffic.traffic(optax.adam(1e-3), bayesian=False)
  assert counted['state_copies'] == 0
  assert counted['writes'] == 3
  assert counted['total'] >= 7


@pytest.mark.parametrize('num', [1, 2, 4])
def test_bayesian_update_copies_no_state(num):
  decays = [0.5 ** (1 / 4**i) for i in range(num)]
  optimizer = mso.bayesian_multiscale(decays, [1 - d * d for d in decays],
                                      1.0)
  counted = update_traffic.traffic(optimizer, bayesian=True)
  assert counted['state_copies'] == 0
  # Means, variances and params are written at least once each.
  assert counted['writes'] >= 2 * num + 1
  assert counted['total'] >= 4 * num + 4


def test_entry_traffic_counts_reads_writes_and_copies():
  hlo = '''
ENTRY %main (p: f32[8], s: f32[8]) -> (f32[8], f32[8]) {
  %p = f32[8]{0} parameter(0)
  %s = f32[8]{0} parameter(1)
  %c = f32[] constant(1)
  %copy.1 = f32[8]{0} copy(%s)
  %add_fusion = f32[8]{0} fusion(%p, %copy.1, %c), kind=kLoop, calls=%f
  %small = f32[] fusion(%p), kind=kLoop, calls=%g
  ROOT %tuple = (f32[8]{0}, f32[8]{0}) tuple(%add_fusion, %copy.1)
}
'''
  counted = update_traffic.entry_traffic(hlo, 8)
  # copy: 1 read, 1 write; add_fusion: 2 reads, 1 write; small: 1 read.
  assert counted == {'reads': 4, 'writes': 2, 'total': 6, 'state_copies': 1,
                     'weighted_reads': 4.0, 'weighted_writes': 2.0,
                     'weighted_total': 6.0}


def test_entry_traffic_weighs_arrays_by_their_size():
  hlo = '''
ENTRY %main (u: f32[3,8], s: f32[8]) -> f32[3,8] {
  %u = f32[3,8]{1,0} parameter(0)
  %s = f32[8]{0} parameter(1)
  ROOT %scaled = f32[3,8]{1,0} fusion(%u, %s), kind=kLoop, calls=%f
}
'''
  counted = update_traffic.entry_traffic(hlo, 8)
  # A rank-3 factor is read and written as one array each, three by size.
  assert (counted['reads'], counted['writes']) == (2, 1)
  assert (counted['weighted_reads'], counted['weighted_writes']) == (4.0, 3.0)


@pytest.mark.parametrize('decays', [[float(np.exp(-1.0))], [0.0, 0.9],
                                    [-0.5, 0.99]])
def test_every_decay_copies_no_state(decays):
  optimizer = mso.bayesian_multiscale(decays, [1 - d * d for d in decays],
                                      1.0)
  assert update_traffic.traffic(optimizer, bayesian=True)[
      'state_copies'] == 0


def test_only_keeps_adam_and_refuses_unknown_rows(capsys):
  with pytest.raises(SystemExit):
    update_traffic.main(['--only', 'bayesian_k3'])
  assert 'unknown rows' in capsys.readouterr().err
