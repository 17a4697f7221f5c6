"""The knowledge-tracing student model: causality, per-student terms, loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.data.students.sequences import KTInput
from metajax.data.students.sequences import KTTarget
from metajax.models.student import StudentModel
from metajax.models.student import masked_bce
from metajax.models.student import student_mask


def _input(answers, visible, questions=None):
  n = len(answers)
  questions = (np.arange(1, n + 1) % 5 + 1 if questions is None else
               questions)
  return KTInput(jnp.asarray(questions, jnp.int32),
                 jnp.asarray(answers, jnp.int8), jnp.asarray(visible, bool))


def _dkt(sequence="lstm"):
  model = StudentModel(6, hidden=8, embed_dim=4, personal_dim=3,
                       sequence=sequence, num_heads=2)
  x = _input([1, 0, 1, 1, 0, 1, 0, 0], [1] * 8)
  return model, model.init(jax.random.PRNGKey(0), x), x


@pytest.mark.parametrize("sequence", ["lstm", "attention"])
def test_sequence_prediction_at_t_reads_only_earlier_visible_answers(
    sequence):
  model, params, x = _dkt(sequence)
  base = model.apply(params, x)
  for t in range(8):
    flipped = x._replace(answers=x.answers.at[t].set(1 - x.answers[t]))
    out = model.apply(params, flipped)
    # Positions up to t are unchanged; some later one moves.
    np.testing.assert_array_equal(out[:t + 1], base[:t + 1])
    if t < 7:
      assert np.abs(np.asarray(out[t + 1:] - base[t + 1:])).max() > 1e-6
  # With answers 3.. invisible, changing them changes nothing at all, and
  # every position from 3 on sees the same state.
  hidden = x._replace(visible=jnp.arange(8) < 3)
  a = model.apply(params, hidden)
  b = model.apply(params, hidden._replace(answers=hidden.answers.at[5].set(0)
                                          .at[6].set(1)))
  np.testing.assert_array_equal(a, b)


def test_irt_model_is_difficulty_plus_ability_plus_profile():
  model = StudentModel(4, hidden=0, personal_dim=2)
  x = _input([0, 0, 0], [0, 0, 0], questions=[1, 3, 3])
  params = model.init(jax.random.PRNGKey(1), x)
  p = params["params"]
  p = dict(p, student={"theta": jnp.array([0.5]), "u": jnp.array([1., -2.])},
           difficulty={"embedding": jnp.arange(5.)[:, None]})
  v = p["item_profile"]["embedding"]
  expected = (jnp.array([1., 3., 3.]) + 0.5 + v[jnp.array([1, 3, 3])] @
              jnp.array([1., -2.]))
  np.testing.assert_allclose(model.apply({"params": p}, x), expected,
                             rtol=1e-6)
  assert set(p) == {"difficulty", "item_profile", "student"}


def test_student_mask_marks_only_the_per_student_parameters():
  _, params, _ = _dkt()
  mask = student_mask(params)
  marked = {"/".join(str(k.key) for k in path)
            for path, m in jax.tree_util.tree_leaves_with_path(mask) if m}
  assert marked == {"params/student/theta", "params/student/u"}


def test_masked_bce():
  logits = jnp.array([2.0, -1.0, 0.5, 3.0])
  y = KTTarget(jnp.array([1, 0, 0, 1], jnp.int8),
               jnp.array([True, True, True, False]))
  p = jax.nn.sigmoid(logits[:3])
  expected = -np.mean(np.log([p[0], 1 - p[1], 1 - p[2]]))
  assert float(masked_bce(logits, y)) == pytest.approx(expected, rel=1e-5)
  # prior_answers=2 divides the 3 answers' sum by 3 + 2.
  assert float(masked_bce(logits, y, 2.0)) == pytest.approx(
      expected * 3 / 5, rel=1e-5)
  none = KTTarget(y.answers, jnp.zeros(4, bool))
  for prior in (0.0, 2.0):
    assert float(masked_bce(logits, none, prior)) == 0.0
    grad = jax.grad(lambda l: masked_bce(l, none, prior))(logits)
    assert not np.asarray(grad).any()


def test_rasch_model_has_one_ability_and_no_empty_profile():
  """personal_dim=0: difficulty + ability, and no zero-size `u` to save."""
  model = StudentModel(4, hidden=0, personal_dim=0)
  x = _input([0, 0, 0], [0, 0, 0], questions=[1, 3, 3])
  p = model.init(jax.random.PRNGKey(1), x)["params"]
  assert set(p["student"]) == {"theta"}
  p = dict(p, student={"theta": jnp.array([0.5])},
           difficulty={"embedding": jnp.arange(5.)[:, None]})
  np.testing.assert_allclose(model.apply({"params": p}, x),
                             [1.5, 3.5, 3.5], rtol=1e-6)


@pytest.mark.slow
def test_attention_history_ignores_padding_and_hidden_positions():
  """SAKT's prediction at a position is that of the sequence cut there."""
  model, params, x = _dkt("attention")
  out = model.apply(params, x)
  for cut in (3, 6):
    short = jax.tree.map(lambda v: v[:cut], x)
    np.testing.assert_allclose(model.apply(params, short), out[:cut],
                               rtol=1e-5, atol=1e-6)
  # Padding (question 0, invisible) after the real positions changes nothing.
  padded = jax.tree.map(lambda v: jnp.concatenate([v, jnp.zeros(4, v.dtype)]),
                        x)
  np.testing.assert_allclose(model.apply(params, padded)[:8], out,
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="sequence must be one of"):
    StudentModel(6, hidden=8, sequence="gru").init(jax.random.PRNGKey(0), x)
