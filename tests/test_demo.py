"""The README's demo command: a student DCLS layer learns the teacher's kernel by moving its elements."""
from train import demo


def test_demo_student_learns_the_teachers_kernel(capsys):
  initial_error, final_error = demo.main(steps=400)
  assert final_error < 0.1 * initial_error
  assert "done: 400 steps" in capsys.readouterr().out
