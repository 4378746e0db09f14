espeak-ng -v en-us -s 160 -w voicemail.wav "$(cat voicemail.txt)" && sox voicemail.wav -r 16000 -c 1 voicemail.flac
