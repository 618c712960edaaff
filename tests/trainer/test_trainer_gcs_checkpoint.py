"""Durable checkpoints: the trainer saves to and resumes from a gs:// bucket (a local GCS emulator,
tpuctl.sim.gcs, reached by orbax through gcsfs, tensorstore and google-cloud-storage as a real bucket is)."""

from tests.trainer.helpers import run_trainer, step_lines


def test_a_run_resumes_from_its_latest_checkpoint_in_a_bucket(tmp_path, gcs_emulator, gcs_bucket):
    settings = ["--set", "checkpoint.every_steps=2", "--set", f"checkpoint.dir={gcs_bucket}",
                "--set", f"out_dir={tmp_path / 'run'}"]
    first = run_trainer([*settings, "--set", "steps=4"], cwd=tmp_path, **gcs_emulator.env)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = gcs_bucket.removeprefix(f"gs://{gcs_emulator.bucket}/") + "/"
    saved = {name[len(folder):].split("/")[0] for name in gcs_emulator.objects(folder)}
    # Labels count completed steps: saved after 2 and 4; max_to_keep 2 keeps both.
    assert saved == {"2", "4"}, saved
    assert f"{folder}4/commit_success.txt" in gcs_emulator.objects(folder)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing went to the local disk

    second = run_trainer([*settings, "--set", "steps=6"], cwd=tmp_path, **gcs_emulator.env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from checkpoint 4 in {gcs_bucket}" in second.stdout
    assert [int(m.group(1)) for m in step_lines(second.stdout)] == [4, 5]
