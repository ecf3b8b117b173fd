"""Stage 4: did the student become the persona, and what does it save -> RUN/report.*"""
