"""Model loading: HF directories (safetensors), GGUF files, the local store."""
