"""Local serving: the embedded SmolLM2 pair (`modelpair`), its quantized candidates (`quantize`),
what this CPU can serve (`cpu`), and the vLLM server processes (`servers`) behind `servecmp serve`
and `servecmp demo`.
"""
