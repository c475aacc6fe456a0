from predq.cli import main

main()
