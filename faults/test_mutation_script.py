"""faults/mutation.py refuses to re-judge mutants against a staged source older than the tree's."""

import mutation


def test_a_staged_copy_that_differs_from_the_tree_is_stale(tmp_path):
    target = mutation.TARGETS["cascade-sampling"]
    source = mutation.ROOT / f"packages/{target.package}/src/imagen/{target.package}"
    staged = tmp_path / "src" / "imagen" / target.package
    staged.mkdir(parents=True)
    files = tuple(target.mutate)
    for name in files:
        (staged / name).write_text(mutation.move_wrapping_decorators((source / name).read_text()))
    assert mutation.stale_files(target, tmp_path, files) == []
    with (staged / files[0]).open("a") as module:
        module.write("\n# an edit made after staging\n")
    assert mutation.stale_files(target, tmp_path, files) == [files[0]]
