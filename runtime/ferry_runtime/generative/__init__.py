"""Text generation: an onnxruntime-genai model folder served with continuous batching on CPU.

`config` reads the folder, `tokenizer` turns text and chat messages into tokens and back, `engine` runs the
decoder on ONNX Runtime over a KV-cache pool Ferry owns, `sampling` picks tokens, `scheduler` is the
continuous-batching loop, and `model` puts them together behind the API the protocols call.
"""
