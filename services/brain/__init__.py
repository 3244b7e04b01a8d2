"""LLM worker: answers a caller's turn by streaming the reply sentence by sentence, so
speech synthesis starts on the first sentence while the model is still writing."""
