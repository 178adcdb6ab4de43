"""Language models over the tokens, trained and evaluated: LLM-ASR (speech tokens in, text out,
``sitok.lm.asr``) and AR-TTS (text in, speech tokens out, ``sitok.lm.tts``); the models themselves
are ``sitok.models.speech_lm`` and ``sitok.models.tts_lm``, the training loop they share is
``sitok.lm.brain``."""
