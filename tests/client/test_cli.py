from __future__ import annotations

from PIL import Image

from jpegweights.cli.main import main


def digits(tmp_path, mnist_test, n=3):
    paths = []
    for i in range(n):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray(mnist_test.images[i].numpy()).save(p)
        paths.append(str(p))
    return paths


def test_pull_predict_run_models(server, tmp_path, mnist_test, capsys):
    cache = str(tmp_path / "cache")
    out = tmp_path / "m.jpw"
    assert main(["pull", server, "--model", "mnist-mlp", "--quality", "20", "-o", str(out), "--cache-dir", cache]) == 0
    assert "verified" in capsys.readouterr().out and out.stat().st_size > 0
    images = digits(tmp_path, mnist_test)
    labels = mnist_test.labels[:3].tolist()
    assert main(["predict", server, *images, "--model", "mnist-mlp", "--cache-dir", cache]) == 0
    remote = [int(line.split("\t")[1]) for line in capsys.readouterr().out.splitlines()]
    assert main(["run", str(out), *images]) == 0
    local = [int(line.split("\t")[1]) for line in capsys.readouterr().out.splitlines()]
    assert main(["run", server, *images, "-m", "mnist-mlp", "-q", "30", "--cache-dir", cache]) == 0
    from_url = [int(line.split("\t")[1]) for line in capsys.readouterr().out.splitlines()]
    assert remote == local == from_url == labels
    assert list((tmp_path / "cache").rglob("q30.jpw")), "run from a URL caches what it decoded"
    assert main(["models", server]) == 0
    assert "mnist-mlp" in capsys.readouterr().out


def test_cli_errors_exit_1_with_one_line(server, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    for argv, message in [
        (["pull", "http://127.0.0.1:9", "--cache-dir", str(tmp_path)], "Connection refused"),
        (["pull", server, "--model", "nope", "--cache-dir", str(tmp_path)], "404"),
        (["predict", server, str(bad), "-m", "mnist-mlp"], "images[0] is not a readable JPEG, PNG or WebP image"),
        (["predict", server, str(bad)], "names no model"),  # two served models take images: name one
        (["run", str(tmp_path / "missing.jpw"), str(bad)], "No such file"),
        (["run", "http://127.0.0.1:9", str(bad), "--cache-dir", str(tmp_path)], "Connection refused"),
    ]:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
