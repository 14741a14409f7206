"""Text-to-chest-X-ray generation on diffusers' public API. Plain Python: no Django.

Modules, in the order a request flows through them:

- ``loading``:  find and load a Stable Diffusion v1.x pipeline (Hub id, folder, file).
- ``tiny``:     build the seeded, untrained, SD-shaped test model from small configs.
- ``lora``:     load, switch, scale and fuse LoRA adapters; hash adapter files.
- ``prompts``:  cut prompts to the model's 77-token window and report what was cut.
- ``sampling``: validate parameters and run one generation, returning a dataclass.
- ``acceleration``: DeepCache and token merging, on for one generation at a time.
- ``cache``:    one pipeline per (source, revision, dtype) per process.
- ``metrics``:  SSIM, PSNR, difference maps and FID.
"""
