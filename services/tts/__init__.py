"""Text-to-speech worker: turns each reply sentence into 8 kHz mu-law audio chunks on the
call's audio.out subject, first chunk as soon as it exists."""
