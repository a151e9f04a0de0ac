#!/usr/bin/env bash
# Builds Atelier, imports the demo checkpoint (a pytorch-CycleGAN-and-pix2pix generator trained
# by bench/reference_cyclegan.py, see examples/README.md) and stylizes the sample photo.
# Until `atelier serve` exists (issue 4), this is the "run the platform" command.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p atelier
bin=target/release/atelier
mkdir -p models out
"$bin" models import examples/ukiyoe_demo_net_G_A.pth \
  --netG resnet_6blocks --ngf 16 --norm instance --no_dropout \
  --name ukiyoe-demo -o models/ukiyoe-demo.safetensors \
  --description "photo -> ukiyo-e woodblock print (small CPU-trained demo, resnet_6blocks ngf 16)" \
  --data "CycleGAN ukiyoe2photo testA prints (192) and monet2photo testB photos (630), 128 px crops" \
  --data-licence "research use only (CycleGAN datasets; photos from Flickr, no licence stated)" \
  --license "weights: research/demo use, trained on research-licensed data" \
  --train-size 128
[ $# -gt 0 ] || set -- examples/photo.jpg
"$bin" stylize "$@" --model ukiyoe-demo -o out/
echo "stylized images are in out/"
