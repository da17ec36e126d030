from avcap.cli import main

main()
