"""Model adapters: one interface (VLModel) over OpenCLIP, Hugging Face CLIP / BLIP and rcc-mini."""
